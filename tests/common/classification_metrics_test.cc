#include "common/classification_metrics.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

using ::testing::HasSubstr;

// Three classes, 10 samples (rows true, columns predicted):
//        p0 p1 p2
//   t0 [  3  1  0 ]   support 4
//   t1 [  1  2  1 ]   support 4
//   t2 [  0  0  2 ]   support 2
// column sums (predicted): 4 3 3; diagonal 3 2 2 -> accuracy 7/10.
// class 0: P 3/4, R 3/4, F1 3/4
// class 1: P 2/3, R 2/4, F1 2*2/(3+4) = 4/7
// class 2: P 2/3, R 2/2, F1 2*2/(3+2) = 4/5
// macro F1 = (3/4 + 4/7 + 4/5) / 3
std::vector<int64_t> Example() { return {3, 1, 0, 1, 2, 1, 0, 0, 2}; }

TEST(ClassificationMetricsTest, HandComputedThreeClassExample) {
  absl::StatusOr<ClassificationMetrics> m =
      ClassificationMetrics::FromConfusion(3, Example(), 9);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->count(), 10);
  EXPECT_DOUBLE_EQ(m->Accuracy(), 0.7);
  EXPECT_DOUBLE_EQ(m->Top5Accuracy(), 0.9);
  const std::vector<ClassScores> c = m->PerClass();
  ASSERT_EQ(c.size(), 3u);
  EXPECT_DOUBLE_EQ(c[0].precision, 0.75);
  EXPECT_DOUBLE_EQ(c[0].recall, 0.75);
  EXPECT_DOUBLE_EQ(c[0].f1, 0.75);
  EXPECT_EQ(c[0].support, 4);
  EXPECT_DOUBLE_EQ(c[1].precision, 2.0 / 3);
  EXPECT_DOUBLE_EQ(c[1].recall, 0.5);
  EXPECT_DOUBLE_EQ(c[1].f1, 4.0 / 7);
  EXPECT_EQ(c[1].support, 4);
  EXPECT_DOUBLE_EQ(c[2].precision, 2.0 / 3);
  EXPECT_DOUBLE_EQ(c[2].recall, 1.0);
  EXPECT_DOUBLE_EQ(c[2].f1, 0.8);
  EXPECT_EQ(c[2].support, 2);
  EXPECT_DOUBLE_EQ(m->MacroF1(), (0.75 + 4.0 / 7 + 0.8) / 3);
}

TEST(ClassificationMetricsTest, AddingSamplesMatchesTheMatrix) {
  ClassificationMetrics m(3);
  // (true, predicted) pairs laid out as in Example(); the one sample whose
  // true label is not in its top 5 is (1 -> 2).
  const int pairs[][2] = {{0, 0}, {0, 0}, {0, 0}, {0, 1}, {1, 0},
                          {1, 1}, {1, 1}, {1, 2}, {2, 2}, {2, 2}};
  for (const auto& p : pairs) {
    const bool top5 = !(p[0] == 1 && p[1] == 2);
    ASSERT_TRUE(m.Add(p[0], p[1], top5).ok());
  }
  EXPECT_EQ(m.confusion(), Example());
  EXPECT_EQ(m.At(0, 1), 1);
  EXPECT_DOUBLE_EQ(m.Accuracy(), 0.7);
  EXPECT_DOUBLE_EQ(m.Top5Accuracy(), 0.9);
}

TEST(ClassificationMetricsTest, CorrectTop1CountsAsTop5Hit) {
  ClassificationMetrics m(2);
  ASSERT_TRUE(m.Add(1, 1, false).ok());
  EXPECT_DOUBLE_EQ(m.Top5Accuracy(), 1.0);
}

TEST(ClassificationMetricsTest, ClassWithoutPredictionsOrSupportIsZeroNotNan) {
  // Class 1 never predicted; class 2 neither true nor predicted.
  //   t0 [ 2 0 0 ]
  //   t1 [ 1 0 0 ]
  //   t2 [ 0 0 0 ]
  absl::StatusOr<ClassificationMetrics> m =
      ClassificationMetrics::FromConfusion(3, {2, 0, 0, 1, 0, 0, 0, 0, 0}, 3);
  ASSERT_TRUE(m.ok()) << m.status();
  const ClassScores c1 = m->Class(1);
  EXPECT_EQ(c1.precision, 0.0);
  EXPECT_EQ(c1.recall, 0.0);
  EXPECT_EQ(c1.f1, 0.0);
  EXPECT_EQ(c1.support, 1);
  const ClassScores c2 = m->Class(2);
  EXPECT_EQ(c2.precision, 0.0);
  EXPECT_EQ(c2.recall, 0.0);
  EXPECT_EQ(c2.f1, 0.0);
  EXPECT_EQ(c2.support, 0);
  // Class 0: P 2/3, R 1, F1 0.8. Class 2 is absent and left out of the
  // macro average: (0.8 + 0) / 2.
  EXPECT_DOUBLE_EQ(m->Class(0).f1, 0.8);
  EXPECT_DOUBLE_EQ(m->MacroF1(), 0.4);
}

TEST(ClassificationMetricsTest, EmptyIsAllZeros) {
  ClassificationMetrics m(4);
  EXPECT_EQ(m.count(), 0);
  EXPECT_EQ(m.Accuracy(), 0.0);
  EXPECT_EQ(m.Top5Accuracy(), 0.0);
  EXPECT_EQ(m.MacroF1(), 0.0);
  EXPECT_EQ(m.Class(3).f1, 0.0);
  EXPECT_EQ(m.confusion().size(), 16u);
  ClassificationMetrics none(0);
  EXPECT_EQ(none.MacroF1(), 0.0);
  EXPECT_TRUE(none.PerClass().empty());
}

TEST(ClassificationMetricsTest, RejectsInconsistentInput) {
  auto wrong_size = ClassificationMetrics::FromConfusion(3, {1, 2, 3}, 0);
  ASSERT_FALSE(wrong_size.ok());
  EXPECT_EQ(wrong_size.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong_size.status().message()),
              HasSubstr("3 counts for 3 classes"));
  auto negative = ClassificationMetrics::FromConfusion(2, {1, -1, 0, 0}, 0);
  ASSERT_FALSE(negative.ok());
  EXPECT_THAT(std::string(negative.status().message()), HasSubstr("negative"));
  auto too_many_hits = ClassificationMetrics::FromConfusion(2, {1, 0, 0, 1}, 3);
  ASSERT_FALSE(too_many_hits.ok());
  ClassificationMetrics m(2);
  absl::Status bad = m.Add(2, 0, true);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.message()), HasSubstr("[0, 2)"));
  EXPECT_EQ(m.count(), 0);
}

}  // namespace
}  // namespace tlserve
