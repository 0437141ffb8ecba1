#include "common/multitask.h"

#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace tlserve {
namespace {

constexpr size_t kMaxTaskName = 32;
constexpr int kMaxTaskClasses = 1000;
constexpr double kMaxLossWeight = 100;

absl::Status Invalid(std::string message) {
  return absl::InvalidArgumentError(std::move(message));
}

bool ValidTaskName(const std::string& name) {
  if (name.empty() || name.size() > kMaxTaskName) return false;
  if (name[0] < 'a' || name[0] > 'z') return false;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
      return false;
    }
  }
  return true;
}

// Written so that NaN fails (every comparison with NaN is false).
bool ValidWeight(float w) { return w >= 0 && w <= kMaxLossWeight; }

std::vector<int> ModelClasses(const tlserve::v1::JobSpec& spec,
                              int dataset_classes) {
  std::vector<int> classes(spec.data().class_subset().begin(),
                           spec.data().class_subset().end());
  if (classes.empty()) {
    for (int c = 0; c < dataset_classes; ++c) classes.push_back(c);
  }
  return classes;
}

}  // namespace

absl::Status ValidateMultitask(const tlserve::v1::JobSpec& spec,
                               int dataset_classes) {
  if (spec.kind() != tlserve::v1::MULTITASK) {
    if (spec.has_multitask()) {
      return Invalid("spec.multitask is for MULTITASK jobs only");
    }
    return absl::OkStatus();
  }
  const tlserve::v1::MultitaskSpec& mt = spec.multitask();
  if (mt.tasks_size() < 1 || mt.tasks_size() > kMaxTasks) {
    return Invalid(absl::StrFormat(
        "spec.multitask.tasks must have 1 to %d tasks for MULTITASK, got %d; "
        "each is a grouping of the dataset's labels (name, class_names, "
        "label_map)",
        kMaxTasks, mt.tasks_size()));
  }
  if (!ValidWeight(mt.classes_loss_weight())) {
    return Invalid(absl::StrFormat(
        "spec.multitask.classes_loss_weight must be in [0, %g] (0: 1), got %g",
        kMaxLossWeight, mt.classes_loss_weight()));
  }
  const std::vector<int> trained = ModelClasses(spec, dataset_classes);
  std::set<std::string> names = {kClassesHead};
  for (int t = 0; t < mt.tasks_size(); ++t) {
    const tlserve::v1::TaskSpec& task = mt.tasks(t);
    const std::string field = absl::StrFormat("spec.multitask.tasks[%d]", t);
    if (!ValidTaskName(task.name())) {
      return Invalid(absl::StrFormat(
          "%s.name '%s' must be 1-%d characters of a-z, 0-9 and '_', "
          "starting with a letter",
          field, task.name(), kMaxTaskName));
    }
    if (!names.insert(task.name()).second) {
      return Invalid(absl::StrFormat(
          "%s.name '%s' is taken (\"classes\" names the dataset's own head; "
          "task names must be unique)",
          field, task.name()));
    }
    const int k = task.class_names_size();
    if (k < 2 || k > kMaxTaskClasses) {
      return Invalid(absl::StrFormat(
          "%s (%s) must have 2 to %d class_names, got %d", field, task.name(),
          kMaxTaskClasses, k));
    }
    std::set<std::string> class_names;
    for (const std::string& c : task.class_names()) {
      if (c.empty() || !class_names.insert(c).second) {
        return Invalid(absl::StrFormat(
            "%s (%s): class names must be non-empty and distinct, got [%s]",
            field, task.name(), absl::StrJoin(task.class_names(), ", ")));
      }
    }
    if (task.label_map_size() != dataset_classes) {
      return Invalid(absl::StrFormat(
          "%s (%s).label_map has %d entries; the dataset has %d labels and "
          "each needs its class in the task",
          field, task.name(), task.label_map_size(), dataset_classes));
    }
    for (int l = 0; l < dataset_classes; ++l) {
      if (task.label_map(l) < 0 || task.label_map(l) >= k) {
        return Invalid(absl::StrFormat(
            "%s (%s).label_map[%d] = %d is outside [0, %d) of its class_names",
            field, task.name(), l, task.label_map(l), k));
      }
    }
    std::vector<bool> taught(k, false);
    for (int l : trained) {
      // A class_subset label outside the dataset is the data checks' to
      // report; here it only must not index past the map.
      if (l >= 0 && l < dataset_classes) taught[task.label_map(l)] = true;
    }
    for (int c = 0; c < k; ++c) {
      if (!taught[c]) {
        return Invalid(absl::StrFormat(
            "%s (%s): class '%s' gets no label the job trains on (labels "
            "%s); map a trained label to it or drop the class",
            field, task.name(), task.class_names(c), absl::StrJoin(trained, ",")));
      }
    }
    if (!ValidWeight(task.loss_weight())) {
      return Invalid(absl::StrFormat(
          "%s (%s).loss_weight must be in [0, %g] (0: 1), got %g", field,
          task.name(), kMaxLossWeight, task.loss_weight()));
    }
  }
  return absl::OkStatus();
}

std::vector<std::vector<int>> TaskClassesOfModelClasses(
    const tlserve::v1::JobSpec& spec, int dataset_classes) {
  const std::vector<int> classes = ModelClasses(spec, dataset_classes);
  std::vector<std::vector<int>> out;
  for (const tlserve::v1::TaskSpec& task : spec.multitask().tasks()) {
    std::vector<int> row;
    for (int label : classes) {
      row.push_back(label >= 0 && label < task.label_map_size()
                        ? task.label_map(label)
                        : 0);
    }
    out.push_back(std::move(row));
  }
  return out;
}

double ClassesLossWeight(const tlserve::v1::MultitaskSpec& multitask) {
  return multitask.classes_loss_weight() > 0 ? multitask.classes_loss_weight()
                                             : 1.0;
}

double TaskLossWeight(const tlserve::v1::TaskSpec& task) {
  return task.loss_weight() > 0 ? task.loss_weight() : 1.0;
}

}  // namespace tlserve
