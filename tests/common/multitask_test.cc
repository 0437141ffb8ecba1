#include "common/multitask.h"

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Fashion-MNIST's ten labels grouped into tops (0 T-shirt, 2 pullover,
// 3 dress, 4 coat, 6 shirt), footwear (5 sandal, 7 sneaker, 9 boot) and
// other (1 trouser, 8 bag).
tlserve::v1::JobSpec CoarseSpec() {
  tlserve::v1::JobSpec spec;
  spec.set_kind(tlserve::v1::MULTITASK);
  tlserve::v1::TaskSpec* task = spec.mutable_multitask()->add_tasks();
  task->set_name("coarse");
  for (const char* c : {"tops", "footwear", "other"}) task->add_class_names(c);
  for (int m : {0, 2, 0, 0, 0, 1, 0, 1, 2, 1}) task->add_label_map(m);
  return spec;
}

absl::Status Check(const tlserve::v1::JobSpec& spec) {
  return ValidateMultitask(spec, 10);
}

TEST(MultitaskTest, AcceptsAGroupingOfTheDatasetsLabels) {
  EXPECT_TRUE(Check(CoarseSpec()).ok()) << Check(CoarseSpec());
  tlserve::v1::JobSpec two = CoarseSpec();
  tlserve::v1::TaskSpec* parity = two.mutable_multitask()->add_tasks();
  parity->set_name("parity_2");
  parity->add_class_names("even");
  parity->add_class_names("odd");
  for (int l = 0; l < 10; ++l) parity->add_label_map(l % 2);
  parity->set_loss_weight(0.5f);
  EXPECT_TRUE(Check(two).ok()) << Check(two);
  // A class_subset label outside the dataset is left to the data checks
  // (a fuzzer found it read past the map).
  tlserve::v1::JobSpec outside = CoarseSpec();
  for (int c : {0, 1, 5, 8, 42, -3}) outside.mutable_data()->add_class_subset(c);
  EXPECT_TRUE(Check(outside).ok()) << Check(outside);
  // Not MULTITASK and no multitask field: nothing to check.
  tlserve::v1::JobSpec plain;
  plain.set_kind(tlserve::v1::FINE_TUNE);
  EXPECT_TRUE(Check(plain).ok());
}

TEST(MultitaskTest, RefusesSpecsNamingTheField) {
  struct Case {
    const char* why;
    std::function<void(tlserve::v1::JobSpec*)> mutate;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"no tasks", [](auto* s) { s->mutable_multitask()->clear_tasks(); },
       "spec.multitask.tasks must have 1 to 16 tasks"},
      {"not multitask",
       [](auto* s) { s->set_kind(tlserve::v1::FINE_TUNE); },
       "spec.multitask is for MULTITASK jobs only"},
      {"bad name",
       [](auto* s) { s->mutable_multitask()->mutable_tasks(0)->set_name("Coarse"); },
       "spec.multitask.tasks[0].name 'Coarse' must be"},
      {"reserved name",
       [](auto* s) { s->mutable_multitask()->mutable_tasks(0)->set_name("classes"); },
       "name 'classes' is taken"},
      {"duplicate name",
       [](auto* s) {
         *s->mutable_multitask()->add_tasks() = s->multitask().tasks(0);
       },
       "spec.multitask.tasks[1].name 'coarse' is taken"},
      {"one class",
       [](auto* s) {
         auto* t = s->mutable_multitask()->mutable_tasks(0);
         t->mutable_class_names()->DeleteSubrange(1, 2);
       },
       "must have 2 to 1000 class_names, got 1"},
      {"repeated class name",
       [](auto* s) { s->mutable_multitask()->mutable_tasks(0)->set_class_names(2, "tops"); },
       "class names must be non-empty and distinct"},
      {"short map",
       [](auto* s) { s->mutable_multitask()->mutable_tasks(0)->mutable_label_map()->RemoveLast(); },
       "label_map has 9 entries; the dataset has 10 labels"},
      {"map out of range",
       [](auto* s) { s->mutable_multitask()->mutable_tasks(0)->set_label_map(4, 3); },
       "label_map[4] = 3 is outside [0, 3)"},
      {"class no trained label teaches",
       [](auto* s) {
         for (int c : {0, 2, 3, 4, 6, 5, 7}) s->mutable_data()->add_class_subset(c);
       },
       "class 'other' gets no label the job trains on (labels 0,2,3,4,6,5,7)"},
      {"NaN weight",
       [](auto* s) {
         s->mutable_multitask()->mutable_tasks(0)->set_loss_weight(std::nanf(""));
       },
       "loss_weight must be in [0, 100]"},
      {"classes weight",
       [](auto* s) { s->mutable_multitask()->set_classes_loss_weight(-1); },
       "spec.multitask.classes_loss_weight must be in [0, 100]"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.why);
    tlserve::v1::JobSpec spec = CoarseSpec();
    c.mutate(&spec);
    const absl::Status status = Check(spec);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.message));
  }
}

TEST(MultitaskTest, TaskClassesFollowTheModelsClassOrder) {
  tlserve::v1::JobSpec spec = CoarseSpec();
  EXPECT_THAT(TaskClassesOfModelClasses(spec, 10),
              ElementsAre(ElementsAre(0, 2, 0, 0, 0, 1, 0, 1, 2, 1)));
  // Model class i is class_subset[i].
  for (int c : {8, 5, 0}) spec.mutable_data()->add_class_subset(c);
  EXPECT_THAT(TaskClassesOfModelClasses(spec, 10),
              ElementsAre(ElementsAre(2, 1, 0)));
  EXPECT_EQ(ClassesLossWeight(spec.multitask()), 1.0);
  spec.mutable_multitask()->set_classes_loss_weight(0.25f);
  EXPECT_EQ(ClassesLossWeight(spec.multitask()), 0.25);
  EXPECT_EQ(TaskLossWeight(spec.multitask().tasks(0)), 1.0);
}

}  // namespace
}  // namespace tlserve
