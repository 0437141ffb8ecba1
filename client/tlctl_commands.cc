#include "client/tlctl_commands.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <random>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/backbone_rank.h"
#include "client/client.h"
#include "client/demo.h"
#include "client/job_compare.h"
#include "client/job_metrics_view.h"
#include "client/job_progress.h"
#include "common/file_util.h"
#include "common/input_fit.h"
#include "common/proto_time.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"

namespace tlserve::cli {
namespace {

using absl::string_view;

// absl::StrCat in Debian's Abseil takes absl::string_view, which is not
// std::string_view there; every std::string_view crosses through this.
string_view AV(std::string_view s) { return string_view(s.data(), s.size()); }

absl::Status FlagError(std::string_view flag, std::string_view problem) {
  return absl::InvalidArgumentError(
      absl::StrCat("--", AV(flag), ": ", AV(problem)));
}

}  // namespace

// ---------------------------------------------------------------------------
// Args

bool Args::Has(std::string_view name) const {
  return values_.find(name) != values_.end();
}

std::string Args::Get(std::string_view name, std::string fallback) const {
  auto it = values_.find(name);
  if (it == values_.end() || it->second.empty()) return fallback;
  return it->second.back();
}

std::vector<std::string> Args::GetAll(std::string_view name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return {};
  return it->second;
}

absl::StatusOr<bool> Args::GetBool(std::string_view name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return false;
  std::string v = absl::AsciiStrToLower(it->second.back());
  if (v.empty() || v == "true" || v == "1" || v == "yes") return true;
  if (v == "false" || v == "0" || v == "no") return false;
  return FlagError(name, absl::StrCat("'", v, "' is not true or false"));
}

absl::StatusOr<int64_t> Args::GetInt(std::string_view name,
                                     int64_t fallback) const {
  if (!Has(name)) return fallback;
  return ParseIntFlag(name, Get(name));
}

absl::StatusOr<double> Args::GetDouble(std::string_view name,
                                       double fallback) const {
  if (!Has(name)) return fallback;
  return ParseDoubleFlag(name, Get(name));
}

std::vector<std::string> Args::GetStringList(std::string_view name) const {
  std::vector<std::string> out;
  for (const std::string& value : GetAll(name)) {
    for (string_view item : absl::StrSplit(value, ',', absl::SkipEmpty())) {
      out.emplace_back(absl::StripAsciiWhitespace(item));
    }
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> Args::GetIntList(
    std::string_view name) const {
  std::vector<int64_t> out;
  for (const std::string& item : GetStringList(name)) {
    ASSIGN_OR_RETURN(int64_t v, ParseIntFlag(name, item));
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<std::vector<double>> Args::GetDoubleList(
    std::string_view name) const {
  std::vector<double> out;
  for (const std::string& item : GetStringList(name)) {
    ASSIGN_OR_RETURN(double v, ParseDoubleFlag(name, item));
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& argv,
                               const std::vector<FlagDef>& defs) {
  Args args;
  bool only_positional = false;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& token = argv[i];
    if (only_positional || !absl::StartsWith(token, "--") ||
        token.size() == 2) {
      if (!only_positional && token == "--") {
        only_positional = true;
      } else {
        args.positional_.push_back(token);
      }
      continue;
    }
    std::string name = token.substr(2);
    std::string value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
      has_value = true;
    }
    auto def = std::find_if(defs.begin(), defs.end(),
                            [&](const FlagDef& d) { return d.name == name; });
    if (def == defs.end()) {
      std::vector<std::string> known;
      for (const FlagDef& d : defs) known.push_back("--" + d.name);
      std::sort(known.begin(), known.end());
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown flag --", name, known.empty() ? "" : " (known: ",
          absl::StrJoin(known, " "), known.empty() ? "" : ")"));
    }
    if (def->takes_value && !has_value) {
      if (i + 1 >= argv.size()) return FlagError(name, "needs a value");
      value = argv[++i];
    }
    auto& slot = args.values_[name];
    if (!slot.empty() && !def->repeated) {
      return FlagError(name, "given more than once");
    }
    slot.push_back(value);
  }
  return args;
}

absl::StatusOr<int64_t> ParseIntFlag(std::string_view flag,
                                     std::string_view text) {
  int64_t value = 0;
  string_view t = absl::StripAsciiWhitespace(AV(text));
  if (t.empty() || !absl::SimpleAtoi(t, &value)) {
    return FlagError(flag, absl::StrCat("'", AV(text), "' is not an integer"));
  }
  return value;
}

absl::StatusOr<double> ParseDoubleFlag(std::string_view flag,
                                       std::string_view text) {
  double value = 0;
  string_view t = absl::StripAsciiWhitespace(AV(text));
  if (t.empty() || !absl::SimpleAtod(t, &value) || !std::isfinite(value)) {
    return FlagError(flag, absl::StrCat("'", AV(text), "' is not a number"));
  }
  return value;
}

namespace {

template <typename Enum>
absl::StatusOr<Enum> ParseChoice(
    std::string_view flag, std::string_view text,
    const std::vector<std::pair<std::string, Enum>>& choices) {
  std::string lower = absl::AsciiStrToLower(AV(text));
  std::vector<std::string> names;
  for (const auto& [name, value] : choices) {
    if (name == lower) return value;
    names.push_back(name);
  }
  return FlagError(flag, absl::StrCat("'", AV(text), "' is not one of ",
                                      absl::StrJoin(names, ", ")));
}

// An int32 field from a flag, at least `min`. Absent: leaves *field alone.
absl::Status GetInt32Into(const Args& args, std::string_view name, int64_t min,
                          int32_t* field) {
  if (!args.Has(name)) return absl::OkStatus();
  ASSIGN_OR_RETURN(int64_t v, ParseIntFlag(name, args.Get(name)));
  if (v < min || v > std::numeric_limits<int32_t>::max()) {
    return FlagError(name,
                     absl::StrCat(v, " is out of range [", min, ", ",
                                  std::numeric_limits<int32_t>::max(), "]"));
  }
  *field = static_cast<int32_t>(v);
  return absl::OkStatus();
}

// A float field from a flag within [min, max] (max_open: [min, max)).
absl::Status GetFloatInto(const Args& args, std::string_view name, double min,
                          double max, bool max_open, float* field) {
  if (!args.Has(name)) return absl::OkStatus();
  ASSIGN_OR_RETURN(double v, ParseDoubleFlag(name, args.Get(name)));
  if (v < min || v > max || (max_open && v == max)) {
    return FlagError(name, absl::StrCat(v, " is outside [", min, ", ", max,
                                        max_open ? ")" : "]"));
  }
  *field = static_cast<float>(v);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::JobState> ParseJobState(std::string_view text) {
  return ParseChoice<v1::JobState>("state", text,
                                   {{"validating", v1::VALIDATING},
                                    {"queued", v1::QUEUED},
                                    {"running", v1::RUNNING},
                                    {"succeeded", v1::SUCCEEDED},
                                    {"failed", v1::FAILED},
                                    {"cancelled", v1::CANCELLED}});
}

const std::vector<FlagDef>& JobCreateFlags() {
  static const auto* flags = new std::vector<FlagDef>{{"spec-json"},
                                                      {"kind"},
                                                      {"name"},
                                                      {"dataset"},
                                                      {"target-dataset"},
                                                      {"domain-weight"},
                                                      {"task", true, true},
                                                      {"task-weight", true, true},
                                                      {"classes-weight"},
                                                      {"classes"},
                                                      {"samples-per-class"},
                                                      {"val-fraction"},
                                                      {"max-test-samples"},
                                                      {"backbone"},
                                                      {"init"},
                                                      {"freeze"},
                                                      {"blocks"},
                                                      {"backbone-lr-scale"},
                                                      {"train-params"},
                                                      {"freeze-params"},
                                                      {"bn-stats"},
                                                      {"layer-decay"},
                                                      {"unfreeze"},
                                                      {"label-smoothing"},
                                                      {"grad-clip"},
                                                      {"early-stop"},
                                                      {"early-stop-metric"},
                                                      {"step-epochs"},
                                                      {"step-gamma"},
                                                      {"feature-cache"},
                                                      {"augment"},
                                                      {"crop-scale-min"},
                                                      {"input-fit"},
                                                      {"resize-shorter-side"},
                                                      {"loader-threads"},
                                                      {"checkpoint-every"},
                                                      {"checkpoint-every-epoch", false},
                                                      {"optimizer"},
                                                      {"lr"},
                                                      {"momentum"},
                                                      {"weight-decay"},
                                                      {"schedule"},
                                                      {"warmup-epochs"},
                                                      {"epochs"},
                                                      {"batch-size"},
                                                      {"micro-batch-size"},
                                                      {"shrink-on-oom", false},
                                                      {"precision"},
                                                      {"seed"},
                                                      {"priority"},
                                                      {"device"},
                                                      {"max-attempts"},
                                                      {"keep-checkpoints"},
                                                      {"hidden"},
                                                      {"dropout"},
                                                      {"pooling"},
                                                      {"max-tokens"},
                                                      {"conv-channels"},
                                                      {"backbone-name"},
                                                      {"base-width"},
                                                      {"request-id"},
                                                      {"watch", false}};
  return *flags;
}

absl::StatusOr<v1::TaskSpec> ParseTaskFlag(std::string_view flag_text) {
  // absl::string_view is not std::string_view in this Abseil.
  const std::string owned(flag_text);
  const absl::string_view text(owned);
  auto bad = [&](absl::string_view why) {
    return FlagError("task", absl::StrCat("'", text, "': ", why,
                                          " (want NAME=GROUP:L,L/GROUP:L,...)"));
  };
  const size_t eq = text.find('=');
  if (eq == absl::string_view::npos || eq == 0) return bad("no NAME=");
  v1::TaskSpec task;
  task.set_name(std::string(text.substr(0, eq)));
  std::map<int64_t, int> group_of;
  for (absl::string_view group : absl::StrSplit(text.substr(eq + 1), '/')) {
    const size_t colon = group.find(':');
    if (colon == absl::string_view::npos || colon == 0) {
      return bad(absl::StrCat("group '", group, "' is not GROUP:LABELS"));
    }
    const int index = task.class_names_size();
    task.add_class_names(std::string(group.substr(0, colon)));
    for (absl::string_view label : absl::StrSplit(group.substr(colon + 1), ',')) {
      ASSIGN_OR_RETURN(int64_t l,
                       ParseIntFlag("task", std::string_view(label.data(), label.size())));
      if (l < 0 || l > 100000) return bad(absl::StrCat("label ", l, " is out of range"));
      if (!group_of.emplace(l, index).second) {
        return bad(absl::StrCat("label ", l, " is in two groups"));
      }
    }
  }
  if (task.class_names_size() < 2) return bad("a task needs 2 or more groups");
  const int64_t max_label = group_of.rbegin()->first;
  for (int64_t l = 0; l <= max_label; ++l) {
    auto it = group_of.find(l);
    if (it == group_of.end()) {
      return bad(absl::StrCat("label ", l, " is in no group"));
    }
    task.add_label_map(it->second);
  }
  return task;
}

absl::Status ApplyJobSpecFlags(const Args& args, v1::JobSpec* spec) {
  if (args.Has("kind")) {
    ASSIGN_OR_RETURN(v1::JobKind kind,
                     ParseChoice<v1::JobKind>("kind", args.Get("kind"),
                                              {{"fine_tune", v1::FINE_TUNE},
                                               {"pretrain", v1::PRETRAIN},
                                               {"few_shot", v1::FEW_SHOT},
                                               {"domain_adapt", v1::DOMAIN_ADAPT},
                                               {"multitask", v1::MULTITASK}}));
    spec->set_kind(kind);
  }
  if (args.Has("name")) spec->set_display_name(args.Get("name"));

  v1::DataSpec* data = spec->mutable_data();
  if (args.Has("dataset")) data->set_dataset_id(args.Get("dataset"));
  if (args.Has("classes")) {
    ASSIGN_OR_RETURN(std::vector<int64_t> classes, args.GetIntList("classes"));
    data->clear_class_subset();
    for (int64_t c : classes) {
      if (c < 0 || c > std::numeric_limits<int32_t>::max()) {
        return FlagError("classes",
                         absl::StrCat("label ", c, " is negative or too big"));
      }
      data->add_class_subset(static_cast<int32_t>(c));
    }
  }
  int32_t i32 = 0;
  float f = 0;
  i32 = data->samples_per_class();
  RETURN_IF_ERROR(GetInt32Into(args, "samples-per-class", 0, &i32));
  data->set_samples_per_class(i32);
  f = data->validation_fraction();
  RETURN_IF_ERROR(GetFloatInto(args, "val-fraction", 0, 1, true, &f));
  data->set_validation_fraction(f);
  i32 = data->max_test_samples();
  RETURN_IF_ERROR(GetInt32Into(args, "max-test-samples", 0, &i32));
  data->set_max_test_samples(i32);

  if (args.Has("backbone")) spec->set_backbone_id(args.Get("backbone"));
  if (args.Has("target-dataset")) {
    spec->mutable_domain_adapt()->set_target_dataset_id(args.Get("target-dataset"));
  }
  if (args.Has("domain-weight")) {
    ASSIGN_OR_RETURN(double w, args.GetDouble("domain-weight", 1));
    if (!(w >= 0 && w <= 100)) {
      return FlagError("domain-weight", "must be in [0, 100] (0: source only)");
    }
    spec->mutable_domain_adapt()->set_domain_loss_weight(static_cast<float>(w));
  }
  if (args.Has("task")) {
    v1::MultitaskSpec* mt = spec->mutable_multitask();
    mt->clear_tasks();
    for (const std::string& text : args.GetAll("task")) {
      ASSIGN_OR_RETURN(v1::TaskSpec task, ParseTaskFlag(text));
      *mt->add_tasks() = std::move(task);
    }
  }
  for (const std::string& text : args.GetAll("task-weight")) {
    const std::vector<std::string> parts = absl::StrSplit(text, '=');
    if (parts.size() != 2) {
      return FlagError("task-weight", absl::StrCat("'", text, "' is not NAME=W"));
    }
    ASSIGN_OR_RETURN(double w, ParseDoubleFlag("task-weight", parts[1]));
    if (!(w > 0 && w <= 100)) {
      return FlagError("task-weight", absl::StrCat("'", text, "': W must be in (0, 100]"));
    }
    bool found = false;
    for (v1::TaskSpec& task : *spec->mutable_multitask()->mutable_tasks()) {
      if (task.name() == parts[0]) {
        task.set_loss_weight(static_cast<float>(w));
        found = true;
      }
    }
    if (!found) {
      return FlagError("task-weight",
                       absl::StrCat("no --task named '", parts[0], "'"));
    }
  }
  if (args.Has("classes-weight")) {
    ASSIGN_OR_RETURN(double w, args.GetDouble("classes-weight", 1));
    if (!(w > 0 && w <= 100)) {
      return FlagError("classes-weight", "must be in (0, 100]");
    }
    spec->mutable_multitask()->set_classes_loss_weight(static_cast<float>(w));
  }
  if (args.Has("init")) {
    ASSIGN_OR_RETURN(v1::BackboneInit init, ParseChoice<v1::BackboneInit>(
                                                "init", args.Get("init"),
                                                {{"pretrained", v1::PRETRAINED},
                                                 {"random", v1::RANDOM}}));
    spec->set_backbone_init(init);
  }

  v1::FreezePolicy* freeze = spec->mutable_freeze();
  if (args.Has("freeze")) {
    ASSIGN_OR_RETURN(v1::FreezePolicy::Mode mode,
                     ParseChoice<v1::FreezePolicy::Mode>(
                         "freeze", args.Get("freeze"),
                         {{"frozen", v1::FreezePolicy::FROZEN},
                          {"last_n_blocks", v1::FreezePolicy::LAST_N_BLOCKS},
                          {"full", v1::FreezePolicy::FULL}}));
    freeze->set_mode(mode);
  }
  i32 = freeze->n_blocks();
  RETURN_IF_ERROR(GetInt32Into(args, "blocks", 1, &i32));
  freeze->set_n_blocks(i32);
  // Catch the two easy mistakes here rather than after a round trip.
  if (args.Has("blocks") && freeze->mode() != v1::FreezePolicy::LAST_N_BLOCKS) {
    return FlagError("blocks", "only applies with --freeze last_n_blocks");
  }
  if (freeze->mode() == v1::FreezePolicy::LAST_N_BLOCKS &&
      freeze->n_blocks() < 1) {
    return FlagError("freeze", "last_n_blocks needs --blocks N (N >= 1)");
  }
  f = freeze->backbone_lr_scale();
  RETURN_IF_ERROR(GetFloatInto(args, "backbone-lr-scale", 0, 1e6, false, &f));
  freeze->set_backbone_lr_scale(f);
  if (args.Has("train-params")) {
    for (absl::string_view p : absl::StrSplit(args.Get("train-params"), ',',
                                              absl::SkipEmpty())) {
      freeze->add_trainable_patterns(std::string(p));
    }
  }
  if (args.Has("freeze-params")) {
    for (absl::string_view p : absl::StrSplit(args.Get("freeze-params"), ',',
                                              absl::SkipEmpty())) {
      freeze->add_frozen_patterns(std::string(p));
    }
  }
  if (args.Has("bn-stats")) {
    ASSIGN_OR_RETURN(
        v1::FreezePolicy::BatchNormStats bn,
        ParseChoice<v1::FreezePolicy::BatchNormStats>(
            "bn-stats", args.Get("bn-stats"),
            {{"follow", v1::FreezePolicy::FOLLOW_TRAINABLE},
             {"frozen", v1::FreezePolicy::FROZEN_ALL},
             {"update", v1::FreezePolicy::UPDATE_ALL}}));
    freeze->set_batchnorm_stats(bn);
  }
  f = freeze->layer_decay();
  RETURN_IF_ERROR(GetFloatInto(args, "layer-decay", 0, 100, false, &f));
  freeze->set_layer_decay(f);
  if (args.Has("unfreeze")) {
    // "EPOCH:N,EPOCH:N": from EPOCH on, the last N blocks train.
    freeze->clear_gradual_unfreeze();
    for (absl::string_view step : absl::StrSplit(args.Get("unfreeze"), ',',
                                                 absl::SkipEmpty())) {
      std::pair<std::string, std::string> parts =
          absl::StrSplit(step, absl::MaxSplits(':', 1));
      int epoch = 0, n = 0;
      if (!absl::SimpleAtoi(parts.first, &epoch) ||
          !absl::SimpleAtoi(parts.second, &n) || epoch < 1 || n < 0) {
        return FlagError("unfreeze",
                         absl::StrCat("'", step,
                                      "' is not EPOCH:BLOCKS (e.g. 3:1,6:2)"));
      }
      auto* s = freeze->add_gradual_unfreeze();
      s->set_epoch(epoch);
      s->set_n_blocks(n);
    }
  }
  f = spec->label_smoothing();
  RETURN_IF_ERROR(GetFloatInto(args, "label-smoothing", 0, 1, true, &f));
  spec->set_label_smoothing(f);
  f = spec->grad_clip_norm();
  RETURN_IF_ERROR(GetFloatInto(args, "grad-clip", 0, 1e9, false, &f));
  spec->set_grad_clip_norm(f);
  i32 = spec->early_stopping().patience();
  RETURN_IF_ERROR(GetInt32Into(args, "early-stop", 1, &i32));
  spec->mutable_early_stopping()->set_patience(i32);
  if (args.Has("early-stop-metric")) {
    const std::string metric = args.Get("early-stop-metric");
    if (metric != "val_accuracy" && metric != "val_loss") {
      return FlagError("early-stop-metric",
                       absl::StrCat("'", metric,
                                    "' is not one of val_accuracy, val_loss"));
    }
    spec->mutable_early_stopping()->set_metric(metric);
  }
  if (args.Has("augment")) {
    v1::AugmentSpec* augment = spec->mutable_augment();
    for (absl::string_view a :
         absl::StrSplit(args.Get("augment"), ',', absl::SkipEmpty())) {
      if (a == "crop") {
        augment->set_random_resized_crop(true);
      } else if (a == "flip") {
        augment->set_horizontal_flip(true);
      } else {
        return FlagError("augment", absl::StrCat("'", a,
                                                 "' is not one of crop, flip"));
      }
    }
  }
  f = spec->augment().crop_scale_min();
  RETURN_IF_ERROR(GetFloatInto(args, "crop-scale-min", 0, 1, false, &f));
  if (args.Has("crop-scale-min")) spec->mutable_augment()->set_crop_scale_min(f);
  i32 = spec->loader_threads();
  RETURN_IF_ERROR(GetInt32Into(args, "loader-threads", 1, &i32));
  spec->set_loader_threads(i32);
  f = spec->checkpoint_every_seconds();
  RETURN_IF_ERROR(
      GetFloatInto(args, "checkpoint-every", 0, 1e7, false, &f));
  spec->set_checkpoint_every_seconds(f);
  if (args.Has("checkpoint-every-epoch")) {
    ASSIGN_OR_RETURN(bool every_epoch, args.GetBool("checkpoint-every-epoch"));
    spec->set_checkpoint_every_epoch(every_epoch);
  }
  if (args.Has("feature-cache")) {
    ASSIGN_OR_RETURN(v1::FeatureCacheSpec::Mode mode,
                     ParseChoice<v1::FeatureCacheSpec::Mode>(
                         "feature-cache", args.Get("feature-cache"),
                         {{"auto", v1::FeatureCacheSpec::AUTO},
                          {"off", v1::FeatureCacheSpec::OFF}}));
    spec->mutable_feature_cache()->set_mode(mode);
  }
  if (args.Has("input-fit")) {
    ASSIGN_OR_RETURN(v1::InputFit::Mode mode,
                     ParseChoice<v1::InputFit::Mode>(
                         "input-fit", args.Get("input-fit"),
                         {{"stretch", v1::InputFit::STRETCH},
                          {"center-crop", v1::InputFit::RESIZE_CENTER_CROP}}));
    spec->mutable_input_fit()->set_mode(mode);
  }
  i32 = spec->input_fit().shorter_side();
  RETURN_IF_ERROR(GetInt32Into(args, "resize-shorter-side", 1, &i32));
  if (args.Has("resize-shorter-side")) {
    // A shorter side means the resize-and-crop fit.
    spec->mutable_input_fit()->set_mode(v1::InputFit::RESIZE_CENTER_CROP);
    spec->mutable_input_fit()->set_shorter_side(i32);
  }

  v1::OptimizerSpec* opt = spec->mutable_optimizer();
  if (args.Has("optimizer")) {
    ASSIGN_OR_RETURN(v1::OptimizerSpec::Kind kind,
                     ParseChoice<v1::OptimizerSpec::Kind>(
                         "optimizer", args.Get("optimizer"),
                         {{"sgd", v1::OptimizerSpec::SGD},
                          {"adamw", v1::OptimizerSpec::ADAMW}}));
    opt->set_kind(kind);
  }
  f = opt->learning_rate();
  RETURN_IF_ERROR(GetFloatInto(args, "lr", 0, 1e3, false, &f));
  opt->set_learning_rate(f);
  f = opt->momentum();
  RETURN_IF_ERROR(GetFloatInto(args, "momentum", 0, 1, true, &f));
  opt->set_momentum(f);
  f = opt->weight_decay();
  RETURN_IF_ERROR(GetFloatInto(args, "weight-decay", 0, 1e3, false, &f));
  opt->set_weight_decay(f);

  v1::ScheduleSpec* schedule = spec->mutable_schedule();
  if (args.Has("schedule")) {
    ASSIGN_OR_RETURN(v1::ScheduleSpec::Kind kind,
                     ParseChoice<v1::ScheduleSpec::Kind>(
                         "schedule", args.Get("schedule"),
                         {{"cosine", v1::ScheduleSpec::COSINE},
                          {"constant", v1::ScheduleSpec::CONSTANT},
                          {"step", v1::ScheduleSpec::STEP}}));
    schedule->set_kind(kind);
  }
  i32 = schedule->step_epochs();
  RETURN_IF_ERROR(GetInt32Into(args, "step-epochs", 1, &i32));
  schedule->set_step_epochs(i32);
  f = schedule->step_gamma();
  RETURN_IF_ERROR(GetFloatInto(args, "step-gamma", 0, 1, false, &f));
  schedule->set_step_gamma(f);
  i32 = schedule->warmup_epochs();
  RETURN_IF_ERROR(GetInt32Into(args, "warmup-epochs", 0, &i32));
  schedule->set_warmup_epochs(i32);

  i32 = spec->epochs();
  RETURN_IF_ERROR(GetInt32Into(args, "epochs", 1, &i32));
  spec->set_epochs(i32);
  i32 = spec->batch_size();
  RETURN_IF_ERROR(GetInt32Into(args, "batch-size", 1, &i32));
  spec->set_batch_size(i32);
  i32 = spec->micro_batch_size();
  RETURN_IF_ERROR(GetInt32Into(args, "micro-batch-size", 0, &i32));
  spec->set_micro_batch_size(i32);
  if (args.Has("shrink-on-oom")) spec->set_shrink_micro_batch_on_oom(true);
  if (args.Has("precision")) {
    ASSIGN_OR_RETURN(v1::Precision precision,
                     ParseChoice<v1::Precision>(
                         "precision", args.Get("precision"),
                         {{"fp32", v1::PRECISION_FP32},
                          {"bf16", v1::PRECISION_BF16}}));
    spec->set_precision(precision);
  }
  if (args.Has("seed")) {
    ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
    if (seed < 0) return FlagError("seed", "must not be negative");
    spec->set_seed(static_cast<uint64_t>(seed));
  }
  i32 = spec->priority();
  RETURN_IF_ERROR(GetInt32Into(args, "priority",
                               std::numeric_limits<int32_t>::min(), &i32));
  spec->set_priority(i32);
  if (args.Has("device")) {
    std::string device = args.Get("device");
    if (device != "cpu" && device != "cuda") {
      return FlagError("device",
                       absl::StrCat("'", device, "' is not one of cpu, cuda"));
    }
    spec->set_device(device);
  }
  i32 = spec->max_attempts();
  RETURN_IF_ERROR(GetInt32Into(args, "max-attempts", 1, &i32));
  spec->set_max_attempts(i32);
  i32 = spec->keep_checkpoints();
  RETURN_IF_ERROR(GetInt32Into(args, "keep-checkpoints", 0, &i32));
  spec->set_keep_checkpoints(i32);

  v1::HeadSpec* head = spec->mutable_head();
  if (args.Has("hidden")) {
    ASSIGN_OR_RETURN(std::vector<int64_t> sizes, args.GetIntList("hidden"));
    head->clear_hidden_sizes();
    for (int64_t size : sizes) {
      if (size < 1 || size > (1 << 20)) {
        return FlagError("hidden", absl::StrCat("layer size ", size,
                                                " is outside [1, 1048576]"));
      }
      head->add_hidden_sizes(static_cast<int32_t>(size));
    }
  }
  f = head->dropout();
  RETURN_IF_ERROR(GetFloatInto(args, "dropout", 0, 1, true, &f));
  head->set_dropout(f);

  // Text jobs: the server refuses these for image datasets.
  if (args.Has("pooling")) {
    const std::string pooling = absl::AsciiStrToLower(args.Get("pooling"));
    if (pooling != "mean" && pooling != "max" && pooling != "conv") {
      return FlagError("pooling", absl::StrCat("'", pooling,
                                               "' is not one of mean, max, conv"));
    }
    spec->mutable_text()->set_pooling(pooling);
  }
  if (args.Has("max-tokens")) {
    i32 = spec->text().max_tokens();
    RETURN_IF_ERROR(GetInt32Into(args, "max-tokens", 1, &i32));
    spec->mutable_text()->set_max_tokens(i32);
  }
  if (args.Has("conv-channels")) {
    i32 = spec->text().conv_channels();
    RETURN_IF_ERROR(GetInt32Into(args, "conv-channels", 1, &i32));
    spec->mutable_text()->set_conv_channels(i32);
  }

  if (args.Has("backbone-name")) {
    spec->mutable_pretrain()->set_backbone_name(args.Get("backbone-name"));
  }
  i32 = spec->pretrain().base_width();
  RETURN_IF_ERROR(GetInt32Into(args, "base-width", 1, &i32));
  if (i32 != 0) spec->mutable_pretrain()->set_base_width(i32);
  return absl::OkStatus();
}

absl::StatusOr<v1::JobSpec> JobSpecFromArgs(const Args& args) {
  v1::JobSpec spec;
  if (args.Has("spec-json")) {
    std::string path = args.Get("spec-json");
    ASSIGN_OR_RETURN(std::string json, ReadFile(path));
    auto status = google::protobuf::util::JsonStringToMessage(json, &spec);
    if (!status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--spec-json ", path,
                       ": not a JobSpec: ", std::string(status.message())));
    }
  }
  RETURN_IF_ERROR(ApplyJobSpecFlags(args, &spec));
  if (spec.kind() == v1::JOB_KIND_UNSPECIFIED) spec.set_kind(v1::FINE_TUNE);
  return spec;
}

absl::StatusOr<v1::InputSpec> InputSpecFromArgs(const Args& args) {
  v1::InputSpec spec;
  if (args.Has("spec-json")) {
    std::string path = args.Get("spec-json");
    ASSIGN_OR_RETURN(std::string json, ReadFile(path));
    auto status = google::protobuf::util::JsonStringToMessage(json, &spec);
    if (!status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--spec-json ", path,
                       ": not an InputSpec: ", std::string(status.message())));
    }
  }
  int32_t v = spec.channels();
  RETURN_IF_ERROR(GetInt32Into(args, "channels", 1, &v));
  spec.set_channels(v);
  v = spec.height();
  RETURN_IF_ERROR(GetInt32Into(args, "height", 1, &v));
  spec.set_height(v);
  v = spec.width();
  RETURN_IF_ERROR(GetInt32Into(args, "width", 1, &v));
  spec.set_width(v);
  if (args.Has("mean")) {
    ASSIGN_OR_RETURN(std::vector<double> mean, args.GetDoubleList("mean"));
    spec.clear_mean();
    for (double m : mean) spec.add_mean(static_cast<float>(m));
  }
  if (args.Has("std")) {
    ASSIGN_OR_RETURN(std::vector<double> std, args.GetDoubleList("std"));
    spec.clear_std();
    for (double s : std) {
      if (s <= 0) return FlagError("std", "every value must be > 0");
      spec.add_std(static_cast<float>(s));
    }
  }
  if (spec.channels() < 1 || spec.height() < 1 || spec.width() < 1) {
    return absl::InvalidArgumentError(
        "the input spec needs --channels, --height and --width (or "
        "--spec-json FILE)");
  }
  if (spec.mean_size() != spec.channels() ||
      spec.std_size() != spec.channels()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--mean and --std need one value per channel (", spec.channels(),
        "); got ", spec.mean_size(), " and ", spec.std_size()));
  }
  return spec;
}

std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths(header.size(), 0);
  auto measure = [&](const std::vector<std::string>& row) {
    for (size_t i = 0; i < row.size() && i < widths.size(); ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  };
  measure(header);
  for (const auto& row : rows) measure(row);
  std::string out;
  auto append = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t i = 0; i < row.size() && i < widths.size(); ++i) {
      absl::StrAppend(&line, row[i]);
      if (i + 1 < row.size()) {
        line.append(widths[i] - row[i].size() + 2, ' ');
      }
    }
    absl::StrAppend(&out, line, "\n");
  };
  append(header);
  for (const auto& row : rows) append(row);
  return out;
}

// ---------------------------------------------------------------------------
// Commands

namespace {

struct Context {
  const RunOptions* options = nullptr;
  std::ostream* out = nullptr;
  std::ostream* err = nullptr;
  bool json = false;
  std::string server;
  std::string token;
  std::string tls_ca_file;
  absl::Duration timeout = absl::Seconds(30);
  std::unique_ptr<Client> client;

  absl::StatusOr<Client*> GetClient() {
    if (client == nullptr) {
      Client::Options client_options;
      client_options.target = server;
      client_options.timeout = timeout;
      client_options.token = token;
      client_options.tls_ca_file = tls_ca_file;
      ASSIGN_OR_RETURN(client, Client::Connect(std::move(client_options)));
    }
    return client.get();
  }
};

using Handler = absl::StatusOr<int> (*)(Context&, const Args&);

struct Command {
  std::string group;
  std::string verb;  // "" for one-word commands
  std::string usage;
  size_t positional = 0;  // exactly this many positional arguments
  std::vector<FlagDef> flags;
  Handler run = nullptr;
};

absl::Status PrintJson(Context& ctx, const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  std::string json;
  auto status =
      google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) {
    return absl::InternalError(
        absl::StrCat("cannot print JSON: ", std::string(status.message())));
  }
  *ctx.out << json;
  if (json.empty() || json.back() != '\n') *ctx.out << "\n";
  return absl::OkStatus();
}

std::string TimeText(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", FromProtoTime(t),
                          absl::LocalTimeZone());
}

// "batch 8, delay 500us" / "defaults" / "undeployed".
std::string ServingText(const v1::ServingConfig& serving) {
  if (serving.undeployed()) return "undeployed";
  std::vector<std::string> parts;
  if (serving.has_max_batch_size()) {
    parts.push_back(absl::StrCat("batch ", serving.max_batch_size()));
  }
  if (serving.has_max_queue_delay_us()) {
    parts.push_back(absl::StrCat("delay ", serving.max_queue_delay_us(), "us"));
  }
  if (serving.has_max_queue_size()) {
    parts.push_back(absl::StrCat("queue ", serving.max_queue_size()));
  }
  return parts.empty() ? "deployed" : absl::StrCat("deployed (", absl::StrJoin(parts, ", "), ")");
}

std::string Bytes(int64_t n) {
  if (n >= (1 << 20)) return absl::StrFormat("%.1f MiB", n / 1048576.0);
  if (n >= (1 << 10)) return absl::StrFormat("%.1f KiB", n / 1024.0);
  return absl::StrCat(n, " B");
}

std::string InputSpecText(const v1::InputSpec& s) {
  std::string fit;
  if (s.fit().mode() == v1::InputFit::RESIZE_CENTER_CROP) {
    fit = absl::StrFormat(", shorter side to %d then centre crop",
                          ShorterSide(s));
  }
  return absl::StrFormat("%dx%dx%d mean [%s] std [%s]%s", s.channels(),
                         s.height(), s.width(), absl::StrJoin(s.mean(), ","),
                         absl::StrJoin(s.std(), ","), fit);
}

std::string KindName(v1::JobKind kind) {
  return absl::AsciiStrToLower(v1::JobKind_Name(kind));
}

// --- dataset ---

// What the server found at upload (duplicates, leakage, imbalance).
void PrintDatasetWarnings(std::ostream& o, const v1::Dataset& d) {
  if (d.duplicate_train_images() > 0 || d.test_images_in_train() > 0) {
    o << "duplicates: " << d.duplicate_train_images()
      << " train images repeated, " << d.test_images_in_train()
      << " test images also in train\n";
  }
  for (const std::string& warning : d.warnings()) {
    o << "warning: " << warning << "\n";
  }
}

absl::StatusOr<int> DatasetUpload(Context& ctx, const Args& args) {
  std::string name = args.Get("name");
  if (name.empty()) return FlagError("name", "is required");
  std::vector<std::pair<v1::DatasetPartRole, std::string>> parts;
  v1::DatasetFormat format;
  bool idx = args.Has("idx-train-images") || args.Has("idx-train-labels") ||
             args.Has("idx-test-images") || args.Has("idx-test-labels");
  bool archive = args.Has("archive") || args.Has("test-archive");
  bool text = args.Has("text-csv") || args.Has("test-text-csv");
  if (idx + archive + text != 1) {
    return absl::InvalidArgumentError(
        "give one of: --idx-train-images and --idx-train-labels (IDX), "
        "--archive (a tar of class_name/*.png|jpg), or --text-csv (a CSV "
        "with text and label columns)");
  }
  if (text) {
    format = v1::TEXT_CSV;
    if (!args.Has("text-csv")) return FlagError("text-csv", "is required");
    parts.emplace_back(v1::TRAIN_CSV, args.Get("text-csv"));
    if (args.Has("test-text-csv")) {
      parts.emplace_back(v1::TEST_CSV, args.Get("test-text-csv"));
    }
  } else if (idx) {
    format = v1::IDX;
    if (!args.Has("idx-train-images") || !args.Has("idx-train-labels")) {
      return absl::InvalidArgumentError(
          "IDX needs both --idx-train-images and --idx-train-labels");
    }
    if (args.Has("idx-test-images") != args.Has("idx-test-labels")) {
      return absl::InvalidArgumentError(
          "give --idx-test-images and --idx-test-labels together");
    }
    parts.emplace_back(v1::TRAIN_IMAGES, args.Get("idx-train-images"));
    parts.emplace_back(v1::TRAIN_LABELS, args.Get("idx-train-labels"));
    if (args.Has("idx-test-images")) {
      parts.emplace_back(v1::TEST_IMAGES, args.Get("idx-test-images"));
      parts.emplace_back(v1::TEST_LABELS, args.Get("idx-test-labels"));
    }
  } else {
    format = v1::IMAGE_FOLDER_TAR;
    if (!args.Has("archive")) return FlagError("archive", "is required");
    if (args.Has("class-names")) {
      return FlagError("class-names",
                       "archives take class names from their folder names");
    }
    parts.emplace_back(v1::TRAIN_ARCHIVE, args.Get("archive"));
    if (args.Has("test-archive")) {
      parts.emplace_back(v1::TEST_ARCHIVE, args.Get("test-archive"));
    }
  }
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(v1::Dataset dataset,
                   client->UploadDatasetFiles(name, format, parts,
                                              args.GetStringList("class-names"),
                                              args.Get("request-id")));
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, dataset));
  } else {
    *ctx.out << "uploaded dataset " << dataset.id() << " ('" << dataset.name()
             << "'): " << dataset.train_count() << " train, "
             << dataset.test_count()
             << (dataset.format() == v1::TEXT_CSV ? " test texts, "
                                                   : " test images, ")
             << dataset.class_names_size() << " classes\n";
    PrintDatasetWarnings(*ctx.out, dataset);
  }
  return 0;
}

void PrintDatasetDetails(Context& ctx, const v1::Dataset& d) {
  std::ostream& o = *ctx.out;
  o << "id:       " << d.id() << "\n"
    << "tenant:   " << d.tenant() << "\n"
    << "name:     " << d.name() << "\n"
    << "format:   " << v1::DatasetFormat_Name(d.format()) << "\n"
    << (d.format() == v1::TEXT_CSV ? "texts:    " : "images:   ")
    << d.train_count() << " train, " << d.test_count() << " test";
  if (d.height() > 0) {
    o << " (" << d.channels() << "x" << d.height() << "x" << d.width() << ")";
  }
  o << "\ncreated:  " << TimeText(d.create_time()) << "\n";
  std::vector<std::vector<std::string>> rows;
  for (int i = 0; i < d.class_names_size(); ++i) {
    rows.push_back(
        {absl::StrCat(i), d.class_names(i),
         i < d.train_class_counts_size() ? absl::StrCat(d.train_class_counts(i))
                                         : "-",
         i < d.test_class_counts_size() ? absl::StrCat(d.test_class_counts(i))
                                        : "-"});
  }
  o << "\n" << FormatTable({"LABEL", "CLASS", "TRAIN", "TEST"}, rows);
  if (d.warnings_size() > 0) o << "\n";
  PrintDatasetWarnings(o, d);
}

absl::StatusOr<int> DatasetGet(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(v1::Dataset d, client->GetDataset(args.positional()[0]));
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, d));
  } else {
    PrintDatasetDetails(ctx, d);
  }
  return 0;
}

absl::StatusOr<int> DatasetList(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  v1::ListDatasetsResponse response;
  if (args.Has("page-size") || args.Has("page-token")) {
    ASSIGN_OR_RETURN(int64_t size, args.GetInt("page-size", 0));
    ASSIGN_OR_RETURN(response,
                     client->ListDatasetsPage(static_cast<int32_t>(size),
                                              args.Get("page-token")));
  } else {
    ASSIGN_OR_RETURN(std::vector<v1::Dataset> all, client->ListDatasets());
    for (auto& d : all) *response.add_datasets() = std::move(d);
  }
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, response));
    return 0;
  }
  std::vector<std::vector<std::string>> rows;
  for (const v1::Dataset& d : response.datasets()) {
    rows.push_back({d.id(), d.name(), v1::DatasetFormat_Name(d.format()),
                    absl::StrCat(d.train_count()), absl::StrCat(d.test_count()),
                    absl::StrCat(d.class_names_size()),
                    TimeText(d.create_time())});
  }
  *ctx.out << FormatTable(
      {"ID", "NAME", "FORMAT", "TRAIN", "TEST", "CLASSES", "CREATED"}, rows);
  if (!response.next_page_token().empty()) {
    *ctx.out << "next page: --page-token=" << response.next_page_token()
             << "\n";
  }
  return 0;
}

absl::StatusOr<int> DatasetDelete(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  RETURN_IF_ERROR(client->DeleteDataset(args.positional()[0]));
  if (!ctx.json) *ctx.out << "deleted dataset " << args.positional()[0] << "\n";
  return 0;
}

// --- backbone ---

void PrintBackboneDetails(Context& ctx, const v1::Backbone& b) {
  *ctx.out << "id:           " << b.id() << "\n"
           << "tenant:       "
           << (b.tenant().empty() ? "(shared)" : b.tenant()) << "\n"
           << "name:         " << b.name() << "\n";
  if (b.kind() == v1::WORD_VECTORS) {
    *ctx.out << "kind:         word vectors, " << b.vocab_size() << " words\n";
  } else {
    *ctx.out << "input:        " << InputSpecText(b.input_spec()) << "\n";
  }
  *ctx.out << "feature dim:  "
           << (b.feature_dim() > 0 ? absl::StrCat(b.feature_dim()) : "unknown")
           << "\n"
           << "blocks:       " << absl::StrJoin(b.blocks(), ", ") << "\n"
           << "size:         " << Bytes(b.size_bytes()) << "\n"
           << "sha256:       " << b.sha256() << "\n"
           << "source job:   "
           << (b.source_job_id().empty() ? "-" : b.source_job_id()) << "\n"
           << "created:      " << TimeText(b.create_time()) << "\n";
}

absl::StatusOr<int> BackboneUpload(Context& ctx, const Args& args) {
  std::string name = args.Get("name");
  if (name.empty()) return FlagError("name", "is required");
  if (!args.Has("file")) return FlagError("file", "is required");
  v1::Backbone b;
  if (args.Has("word-vectors")) {
    for (const char* flag :
         {"spec-json", "channels", "height", "width", "mean", "std"}) {
      if (args.Has(flag)) {
        return FlagError(flag, "is for image backbones, not --word-vectors");
      }
    }
    ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
    ASSIGN_OR_RETURN(b, client->UploadWordVectors(name, args.Get("file"),
                                                  args.Get("request-id")));
  } else {
    ASSIGN_OR_RETURN(v1::InputSpec spec, InputSpecFromArgs(args));
    ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
    ASSIGN_OR_RETURN(b, client->UploadBackbone(name, args.Get("file"), spec,
                                               args.Get("request-id")));
  }
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, b));
  } else {
    PrintBackboneDetails(ctx, b);
  }
  return 0;
}

absl::StatusOr<int> BackboneRank(Context& ctx, const Args& args) {
  if (!args.Has("dataset")) {
    return FlagError("dataset", "is required: the labelled data to rank on");
  }
  RankOptions options;
  options.dataset_id = args.Get("dataset");
  options.backbone_ids = args.GetStringList("backbones");
  ASSIGN_OR_RETURN(std::vector<int64_t> classes, args.GetIntList("classes"));
  for (int64_t c : classes) {
    if (c < 0 || c > 1'000'000) return FlagError("classes", "labels must be >= 0");
    options.class_subset.push_back(static_cast<int32_t>(c));
  }
  ASSIGN_OR_RETURN(int64_t shots, args.GetInt("shots", 20));
  if (shots < 1 || shots > 100'000) return FlagError("shots", "must be in [1, 100000]");
  options.shots = static_cast<int>(shots);
  ASSIGN_OR_RETURN(int64_t test, args.GetInt("max-test-samples", 1000));
  if (test < 0 || test > 10'000'000) {
    return FlagError("max-test-samples", "must be >= 0 (0: the whole test split)");
  }
  options.max_test_samples = static_cast<int>(test);
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 1));
  options.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(int64_t wait_s, args.GetInt("wait-seconds", 1800));
  if (wait_s < 1) return FlagError("wait-seconds", "must be >= 1");
  options.timeout = absl::Seconds(wait_s);
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(std::vector<RankedBackbone> ranked,
                   RankBackbones(*client, options));
  if (ctx.json) {
    for (const RankedBackbone& r : ranked) {
      *ctx.out << absl::StrFormat(
          "{\"backbone_id\": \"%s\", \"job_id\": \"%s\", \"accuracy\": %.6f, "
          "\"top5_accuracy\": %.6f, \"scored\": %d, \"seconds\": %.3f, "
          "\"error\": \"%s\"}\n",
          absl::CEscape(r.backbone_id), absl::CEscape(r.job_id), r.accuracy,
          r.top5_accuracy, r.scored, r.seconds, absl::CEscape(r.error));
    }
    return 0;
  }
  *ctx.out << "nearest-class-mean accuracy with " << options.shots
           << " labelled images per class (no training):\n"
           << FormatRanking(ranked);
  return 0;
}

absl::StatusOr<int> BackboneGet(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(v1::Backbone b, client->GetBackbone(args.positional()[0]));
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, b));
  } else {
    PrintBackboneDetails(ctx, b);
  }
  return 0;
}

absl::StatusOr<int> BackboneList(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(std::vector<v1::Backbone> all, client->ListBackbones());
  v1::ListBackbonesResponse response;
  for (auto& b : all) *response.add_backbones() = std::move(b);
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, response));
    return 0;
  }
  std::vector<std::vector<std::string>> rows;
  for (const v1::Backbone& b : response.backbones()) {
    const v1::InputSpec& s = b.input_spec();
    rows.push_back(
        {b.id(), b.name(),
         b.kind() == v1::WORD_VECTORS
             ? absl::StrCat("text (", b.vocab_size(), " words)")
             : absl::StrFormat("%dx%dx%d", s.channels(), s.height(), s.width()),
         b.feature_dim() > 0 ? absl::StrCat(b.feature_dim()) : "-",
         absl::StrCat(b.blocks_size()), Bytes(b.size_bytes()),
         b.source_job_id().empty() ? "-" : b.source_job_id(),
         TimeText(b.create_time())});
  }
  *ctx.out << FormatTable({"ID", "NAME", "INPUT", "FEATURES", "BLOCKS", "SIZE",
                           "SOURCE_JOB", "CREATED"},
                          rows);
  return 0;
}

// --- job ---

std::string ProgressText(const v1::Job& job) {
  if (job.state() == v1::QUEUED) {
    return absl::StrCat("queue position ", job.queue_position());
  }
  if (job.state() != v1::RUNNING || job.progress().total_epochs() == 0) {
    return "-";
  }
  return absl::StrFormat("epoch %d/%d", job.progress().epoch(),
                         job.progress().total_epochs());
}

void PrintJobDetails(Context& ctx, const v1::Job& job) {
  std::ostream& o = *ctx.out;
  const v1::JobSpec& s = job.spec();
  o << "id:         " << job.id() << "\n"
    << "tenant:     " << job.tenant() << "\n"
    << "name:       " << (s.display_name().empty() ? "-" : s.display_name())
    << "\n"
    << "kind:       " << KindName(s.kind()) << "\n"
    << "state:      " << JobStateName(job.state());
  if (job.attempt() > 0) o << " (attempt " << job.attempt() << ")";
  o << "\n";
  if (!job.error().empty()) o << "error:      " << job.error() << "\n";
  o << "dataset:    " << s.data().dataset_id();
  if (s.data().class_subset_size() > 0) {
    o << " classes [" << absl::StrJoin(s.data().class_subset(), ",") << "]";
  }
  if (s.data().samples_per_class() > 0) {
    o << " " << s.data().samples_per_class() << "/class";
  }
  o << "\n";
  if (s.kind() == v1::FINE_TUNE || s.kind() == v1::DOMAIN_ADAPT ||
      s.kind() == v1::MULTITASK) {
    o << "backbone:   " << s.backbone_id() << " ("
      << absl::AsciiStrToLower(v1::BackboneInit_Name(s.backbone_init())) << ", "
      << absl::AsciiStrToLower(v1::FreezePolicy::Mode_Name(s.freeze().mode()));
    if (s.freeze().mode() == v1::FreezePolicy::LAST_N_BLOCKS) {
      o << " n=" << s.freeze().n_blocks();
    }
    o << ")\n";
    if (s.kind() == v1::DOMAIN_ADAPT) {
      const v1::DomainAdaptSpec& da = s.domain_adapt();
      o << "target:     " << da.target_dataset_id() << " (unlabelled; domain "
        << "loss weight "
        << (da.has_domain_loss_weight() ? da.domain_loss_weight() : 1.0f)
        << ")\n";
    }
 if (s.kind() == v1::MULTITASK) {
      for (const v1::TaskSpec& task : s.multitask().tasks()) {
        o << "task:       " << task.name() << " ["
          << absl::StrJoin(task.class_names(), ", ") << "], loss weight "
          << (task.loss_weight() > 0 ? task.loss_weight() : 1.0f) << "\n";
      }
    }
  } else if (s.kind() == v1::PRETRAIN) {
    o << "registers:  backbone '" << s.pretrain().backbone_name() << "'\n";
  } else if (s.kind() == v1::FEW_SHOT) {
    o << "backbone:   " << s.backbone_id()
      << " (frozen; class means of its features, no training)\n";
  }
  if (s.kind() != v1::FEW_SHOT) {
    o << "training:   " << s.epochs() << " epochs, batch " << s.batch_size()
      << ", "
      << absl::AsciiStrToLower(
             v1::OptimizerSpec::Kind_Name(s.optimizer().kind()))
      << " lr " << s.optimizer().learning_rate() << ", seed " << s.seed()
      << "\n";
  }
  o << "created:    " << TimeText(job.create_time()) << "\n"
    << "started:    " << TimeText(job.start_time()) << "\n"
    << "ended:      " << TimeText(job.end_time()) << "\n";
  if (job.state() == v1::QUEUED) {
    o << "queue:      position " << job.queue_position() << ", expected start "
      << TimeText(job.estimated_start_time()) << "\n";
  }
  if (job.state() == v1::RUNNING) {
    o << "progress:   " << FormatProgressLine(job.progress(), 20) << "\n";
  }
  if (job.state() == v1::SUCCEEDED) {
    const v1::JobResult& r = job.result();
    const bool text = job.spec().has_text() || r.unknown_token_rate() > 0;
    o << absl::StrFormat(
        "result:     test accuracy %.4f, loss %.4f on %d %s\n",
        r.test_accuracy(), r.test_loss(), r.test_count(),
        text ? "texts" : "images");
    if (text) {
      o << absl::StrFormat(
          "            %.1f%% of the tokens had no word vector\n",
          100.0 * r.unknown_token_rate());
    }
    for (const v1::TaskMetrics& t : r.tasks()) {
      o << absl::StrFormat("            head '%s': test accuracy %.4f, loss %.4f\n",
                           t.name(), t.accuracy(), t.loss());
    }
    if (!r.model_id().empty()) o << "model:      " << r.model_id() << "\n";
    if (!r.backbone_id().empty())
      o << "backbone:   " << r.backbone_id() << "\n";
  }
  if (job.metrics_size() > 0) {
    std::vector<std::vector<std::string>> rows;
    std::vector<std::string> header = {"EPOCH", "TRAIN_LOSS", "TRAIN_ACC",
                                       "VAL_LOSS", "VAL_ACC"};
    // MULTITASK: each other head's validation accuracy beside the classes'.
    for (const v1::TaskMetrics& t : job.metrics(0).tasks()) {
      header.push_back(absl::AsciiStrToUpper(absl::StrCat("VAL_ACC_", t.name())));
    }
    header.push_back("SECONDS");
    for (const v1::EpochMetrics& m : job.metrics()) {
      std::vector<std::string> row = {absl::StrCat(m.epoch()),
                                      absl::StrFormat("%.4f", m.train_loss()),
                                      absl::StrFormat("%.3f", m.train_accuracy()),
                                      absl::StrFormat("%.4f", m.val_loss()),
                                      absl::StrFormat("%.3f", m.val_accuracy())};
      for (size_t t = 0; t + 5 < header.size() - 1; ++t) {
        row.push_back(static_cast<int>(t) < m.tasks_size()
                          ? absl::StrFormat("%.3f", m.tasks(t).accuracy())
                          : "-");
      }
      row.push_back(absl::StrFormat("%.1f", m.seconds()));
      rows.push_back(std::move(row));
    }
    o << "\n" << FormatTable(header, rows);
  }
}

// Watches until the end; 0 if the job succeeded, 2 otherwise.
absl::StatusOr<int> WatchAndReport(Context& ctx, const std::string& id,
                                   int64_t after) {
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  JobProgressPrinter printer(*ctx.out, ctx.options->out_is_tty && !ctx.json);
  absl::StatusOr<v1::Job> job =
      client->WatchJob(id, after, [&](const v1::JobEvent& event) {
        if (ctx.json) {
          // One JSON document per line, for tools that follow the stream.
          google::protobuf::util::JsonPrintOptions options;
          options.preserve_proto_field_names = true;
          std::string line;
          if (google::protobuf::util::MessageToJsonString(event, &line, options)
                  .ok()) {
            *ctx.out << line << "\n" << std::flush;
          }
          return true;
        }
        return printer.OnEvent(event);
      });
  printer.Finish();
  if (!job.ok()) return job.status();
  if (!ctx.json) {
    *ctx.out << "job " << job->id() << " " << JobStateName(job->state());
    if (job->state() == v1::SUCCEEDED) {
      *ctx.out << absl::StrFormat(": test accuracy %.4f",
                                  job->result().test_accuracy());
      if (!job->result().model_id().empty()) {
        *ctx.out << ", model " << job->result().model_id();
      }
      if (!job->result().backbone_id().empty()) {
        *ctx.out << ", backbone " << job->result().backbone_id();
      }
    } else if (!job->error().empty()) {
      *ctx.out << ": " << job->error();
    }
    *ctx.out << "\n";
  }
  return job->state() == v1::SUCCEEDED ? 0 : 2;
}

absl::StatusOr<int> JobCreate(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(v1::JobSpec spec, JobSpecFromArgs(args));
  ASSIGN_OR_RETURN(bool watch, args.GetBool("watch"));
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(v1::Job job,
                   client->CreateJob(spec, args.Get("request-id")));
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, job));
  } else {
    *ctx.out << "created job " << job.id() << " (" << JobStateName(job.state())
             << ")\n";
  }
  if (!watch) return 0;
  return WatchAndReport(ctx, job.id(), 0);
}

void PrintModelDetails(Context& ctx, const v1::Model& m);

// A few-shot model: a FEW_SHOT job (no training, seconds), waited for.
absl::StatusOr<int> ModelCreate(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(bool few_shot, args.GetBool("few-shot"));
  if (!few_shot) {
    return absl::InvalidArgumentError(
        "model create makes few-shot models: pass --few-shot (trained "
        "models come from `tlctl job create`)");
  }
  if (!args.Has("dataset") || !args.Has("backbone")) {
    return absl::InvalidArgumentError(
        "model create --few-shot needs --dataset ID and --backbone ID");
  }
  v1::JobSpec spec;
  spec.set_kind(v1::FEW_SHOT);
  RETURN_IF_ERROR(ApplyJobSpecFlags(args, &spec));
  ASSIGN_OR_RETURN(int64_t shots, args.GetInt("shots", 0));
  if (args.Has("shots") && shots < 1) {
    return FlagError("shots", "must be >= 1 (labelled images per class)");
  }
  spec.mutable_data()->set_samples_per_class(static_cast<int32_t>(shots));
  ASSIGN_OR_RETURN(int64_t wait_s, args.GetInt("wait-seconds", 600));
  if (wait_s < 1) return FlagError("wait-seconds", "must be >= 1");
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(v1::Job job, client->CreateJob(spec, args.Get("request-id")));
  if (!ctx.json) {
    *ctx.out << "few-shot job " << job.id() << " (" << JobStateName(job.state())
             << ")\n";
  }
  ASSIGN_OR_RETURN(v1::Job done,
                   client->WaitForJob(job.id(), absl::Seconds(wait_s)));
  if (done.state() != v1::SUCCEEDED) {
    return absl::FailedPreconditionError(
        absl::StrCat("few-shot job ", done.id(), " ended ",
                     JobStateName(done.state()), ": ", done.error()));
  }
  ASSIGN_OR_RETURN(v1::Model model, client->GetModel(done.result().model_id()));
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, model));
    return 0;
  }
  PrintModelDetails(ctx, model);
  *ctx.out << absl::StrFormat(
      "test accuracy %.4f on %d images; made in %.1f s without training\n",
      done.result().test_accuracy(), done.result().test_count(),
      done.result().train_seconds());
  return 0;
}

absl::StatusOr<int> JobGet(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(v1::Job job, client->GetJob(args.positional()[0]));
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, job));
  } else {
    PrintJobDetails(ctx, job);
  }
  return 0;
}

absl::StatusOr<int> JobList(Context& ctx, const Args& args) {
  v1::JobState state = v1::JOB_STATE_UNSPECIFIED;
  if (args.Has("state")) {
    ASSIGN_OR_RETURN(state, ParseJobState(args.Get("state")));
  }
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  v1::ListJobsResponse response;
  if (args.Has("page-size") || args.Has("page-token")) {
    ASSIGN_OR_RETURN(int64_t size, args.GetInt("page-size", 0));
    ASSIGN_OR_RETURN(response,
                     client->ListJobs(state, static_cast<int32_t>(size),
                                      args.Get("page-token")));
  } else {
    ASSIGN_OR_RETURN(std::vector<v1::Job> all, client->ListAllJobs(state));
    for (auto& j : all) *response.add_jobs() = std::move(j);
  }
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, response));
    return 0;
  }
  std::vector<std::vector<std::string>> rows;
  for (const v1::Job& j : response.jobs()) {
    rows.push_back(
        {j.id(), KindName(j.spec().kind()),
         j.spec().display_name().empty() ? "-" : j.spec().display_name(),
         JobStateName(j.state()), ProgressText(j),
         j.state() == v1::SUCCEEDED
             ? absl::StrFormat("%.4f", j.result().test_accuracy())
             : "-",
         TimeText(j.create_time())});
  }
  *ctx.out << FormatTable(
      {"ID", "KIND", "NAME", "STATE", "PROGRESS", "TEST_ACC", "CREATED"}, rows);
  if (!response.next_page_token().empty()) {
    *ctx.out << "next page: --page-token=" << response.next_page_token()
             << "\n";
  }
  return 0;
}

absl::StatusOr<int> JobWatch(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(int64_t after, args.GetInt("after", 0));
  return WatchAndReport(ctx, args.positional()[0], after);
}

absl::StatusOr<int> JobDelete(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  RETURN_IF_ERROR(client->DeleteJob(args.positional()[0]));
  if (!ctx.json) *ctx.out << "deleted job " << args.positional()[0] << "\n";
  return 0;
}

absl::StatusOr<int> JobCancel(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(v1::Job job, client->CancelJob(args.positional()[0]));
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, job));
  } else {
    *ctx.out << "job " << job.id() << " " << JobStateName(job.state()) << "\n";
  }
  return 0;
}

absl::StatusOr<int> JobCheckpoints(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(v1::ListCheckpointsResponse response,
                   client->ListCheckpoints(args.positional()[0]));
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, response));
    return 0;
  }
  std::vector<std::vector<std::string>> rows;
  for (const v1::CheckpointInfo& c : response.checkpoints()) {
    rows.push_back({c.batch() > 0 ? absl::StrCat(c.epoch(), " +", c.batch(),
                                                 " batches")
                                  : absl::StrCat(c.epoch()),
                    absl::StrCat(c.attempt()),
                    Bytes(c.size_bytes()), c.sha256(),
                    TimeText(c.create_time())});
  }
  *ctx.out << FormatTable({"EPOCH", "ATTEMPT", "SIZE", "SHA256", "CREATED"},
                          rows);
  return 0;
}

// The job's class names: the model's once there is one, else the dataset's
// (narrowed to the class subset). Metrics still print without them, so a
// failed lookup falls back to numbered classes.
std::vector<std::string> JobClassNames(Client& client, const v1::Job& job) {
  if (!job.result().model_id().empty()) {
    absl::StatusOr<v1::Model> model = client.GetModel(job.result().model_id());
    if (model.ok()) {
      return {model->class_names().begin(), model->class_names().end()};
    }
  }
  absl::StatusOr<v1::Dataset> dataset =
      client.GetDataset(job.spec().data().dataset_id());
  if (!dataset.ok()) return {};
  if (job.spec().data().class_subset_size() == 0) {
    return {dataset->class_names().begin(), dataset->class_names().end()};
  }
  std::vector<std::string> names;
  for (int32_t label : job.spec().data().class_subset()) {
    names.push_back(label >= 0 && label < dataset->class_names_size()
                        ? dataset->class_names(label)
                        : absl::StrCat("label ", label));
  }
  return names;
}

absl::StatusOr<int> JobMetrics(Context& ctx, const Args& args) {
  for (const char* flag : {"plot-curves", "plot-confusion"}) {
    if (args.Has(flag) && args.Get(flag).empty()) {
      return FlagError(flag, "needs a file name (FILE.png)");
    }
  }
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(v1::Job job, client->GetJob(args.positional()[0]));
  const std::vector<std::string> names = JobClassNames(*client, job);
  std::vector<std::string> written;
  if (args.Has("plot-curves")) {
    ASSIGN_OR_RETURN(std::string png, LearningCurvesPng(job));
    RETURN_IF_ERROR(WriteFileAtomic(args.Get("plot-curves"), png));
    written.push_back(args.Get("plot-curves"));
  }
  if (args.Has("plot-confusion")) {
    ASSIGN_OR_RETURN(std::string png, ConfusionPng(job, names));
    RETURN_IF_ERROR(WriteFileAtomic(args.Get("plot-confusion"), png));
    written.push_back(args.Get("plot-confusion"));
  }
  if (ctx.json) {
    v1::Job metrics_only;
    metrics_only.set_id(job.id());
    metrics_only.set_state(job.state());
    *metrics_only.mutable_metrics() = job.metrics();
    *metrics_only.mutable_result() = job.result();
    RETURN_IF_ERROR(PrintJson(ctx, metrics_only));
    return 0;
  }
  *ctx.out << FormatJobMetrics(job, names);
  for (const std::string& path : written) *ctx.out << "wrote " << path << "\n";
  return 0;
}

constexpr char kJobCompareUsage[] =
    "job compare ID ID [ID...] [--plot FILE.png] "
    "[--metric val_accuracy|val_loss|train_loss|train_accuracy] [--json]";

absl::StatusOr<int> JobCompare(Context& ctx, const Args& args) {
  if (args.positional().size() < 2) {
    *ctx.err << "usage: tlctl " << kJobCompareUsage << "\n";
    return absl::InvalidArgumentError(
        absl::StrCat("job compare needs at least two job ids, got ",
                     args.positional().size()));
  }
  if (args.Has("plot") && args.Get("plot").empty()) {
    return FlagError("plot", "needs a file name (FILE.png)");
  }
  JobCompareOptions options;
  ASSIGN_OR_RETURN(options.metric,
                   ParseCompareMetric(args.Get("metric", "val_accuracy")));
  if (ctx.options->terminal_columns > 0) {
    options.width = ctx.options->terminal_columns;
  }
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  // The server's NOT_FOUND already names the job ("job 'x' not found").
  std::vector<v1::Job> jobs;
  for (const std::string& id : args.positional()) {
    ASSIGN_OR_RETURN(v1::Job job, client->GetJob(id));
    jobs.push_back(std::move(job));
  }
  if (args.Has("plot")) {
    ASSIGN_OR_RETURN(std::string png, JobComparisonPng(jobs, options.metric));
    RETURN_IF_ERROR(WriteFileAtomic(args.Get("plot"), png));
  }
  if (ctx.json) {
    v1::ListJobsResponse response;
    for (v1::Job& job : jobs) *response.add_jobs() = std::move(job);
    RETURN_IF_ERROR(PrintJson(ctx, response));
    return 0;
  }
  *ctx.out << FormatJobComparison(jobs, options);
  if (args.Has("plot")) *ctx.out << "wrote " << args.Get("plot") << "\n";
  return 0;
}

// --- model ---

void PrintModelDetails(Context& ctx, const v1::Model& m) {
  *ctx.out << "id:        " << m.id() << "\n"
           << "tenant:    " << m.tenant() << "\n"
           << "job:       " << m.job_id() << "\n"
           << "backbone:  " << m.backbone_id() << "\n"
           << "classes:   " << absl::StrJoin(m.class_names(), ", ") << "\n"
           << "input:     "
           << (m.has_text()
                   ? absl::StrFormat("texts: %s pooling, first %d tokens",
                                     m.text().pooling(), m.text().max_tokens())
                   : InputSpecText(m.input_spec()))
           << "\n"
           << "size:      " << Bytes(m.size_bytes()) << "\n"
           << "sha256:    " << m.sha256() << "\n"
           << "created:   " << TimeText(m.create_time()) << "\n";
}

absl::StatusOr<int> ModelGet(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(v1::Model m, client->GetModel(args.positional()[0]));
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, m));
  } else {
    PrintModelDetails(ctx, m);
  }
  return 0;
}

absl::StatusOr<int> ModelList(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(std::vector<v1::Model> all, client->ListModels());
  v1::ListModelsResponse response;
  for (auto& m : all) *response.add_models() = std::move(m);
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, response));
    return 0;
  }
  std::vector<std::vector<std::string>> rows;
  for (const v1::Model& m : response.models()) {
    // A frozen backbone is shared with the other models on it when served.
    rows.push_back({m.id(), m.job_id(),
                    m.backbone_digest().empty()
                        ? m.backbone_id()
                        : absl::StrCat(m.backbone_id(), " (frozen)"),
                    absl::StrCat(m.class_names_size()), Bytes(m.size_bytes()),
                    ServingText(m.serving()), TimeText(m.create_time())});
  }
  *ctx.out << FormatTable(
      {"ID", "JOB", "BACKBONE", "CLASSES", "SIZE", "SERVING", "CREATED"}, rows);
  return 0;
}

absl::StatusOr<int> ModelDeploy(Context& ctx, const Args& args) {
  v1::ServingConfig serving;
  if (args.Has("max-batch-size")) {
    ASSIGN_OR_RETURN(int64_t v, args.GetInt("max-batch-size", 0));
    serving.set_max_batch_size(static_cast<int32_t>(v));
  }
  if (args.Has("max-queue-delay-us")) {
    ASSIGN_OR_RETURN(int64_t v, args.GetInt("max-queue-delay-us", 0));
    serving.set_max_queue_delay_us(v);
  }
  if (args.Has("max-queue")) {
    ASSIGN_OR_RETURN(int64_t v, args.GetInt("max-queue", 0));
    serving.set_max_queue_size(static_cast<int32_t>(v));
  }
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(v1::Model model,
                   client->DeployModel(args.positional()[0], serving));
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, model));
  } else {
    *ctx.out << "deployed " << model.id() << ": " << ServingText(model.serving())
             << "\n";
  }
  return 0;
}

absl::StatusOr<int> ModelDelete(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  RETURN_IF_ERROR(client->DeleteModel(args.positional()[0]));
  if (!ctx.json) *ctx.out << "deleted model " << args.positional()[0] << "\n";
  return 0;
}

absl::StatusOr<int> ModelUndeploy(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(v1::Model model, client->UndeployModel(args.positional()[0]));
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, model));
  } else {
    *ctx.out << "undeployed " << model.id() << "\n";
  }
  return 0;
}

absl::StatusOr<int> ModelExport(Context& ctx, const Args& args) {
  std::string out_path = args.Get("out");
  if (out_path.empty()) return FlagError("out", "is required");
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(std::string sha256,
                   client->ExportModel(args.positional()[0], out_path));
  if (!ctx.json) {
    *ctx.out << "wrote " << out_path << " (sha256 " << sha256
             << "); load it with torch.jit.load\n";
  }
  return 0;
}

// --- predict ---

// The inputs of predict and embed: image files, texts (text models), or
// one random tensor at the model's input size. `images` gets how each
// input is named in the output (a file name, or the text quoted).
absl::StatusOr<v1::PredictRequest> InferenceInputs(Context& ctx,
                                                   const Args& args,
                                                   std::vector<std::string>* images_out) {
  std::string model_id = args.Get("model");
  if (model_id.empty()) return FlagError("model", "is required");
  ASSIGN_OR_RETURN(bool random, args.GetBool("random-tensor"));
  std::vector<std::string> images = args.GetAll("image");
  // Several files may also follow --image as positional arguments.
  for (const std::string& p : args.positional()) images.push_back(p);
  const std::vector<std::string> texts = args.GetAll("text");
  if (random + !images.empty() + !texts.empty() != 1) {
    return absl::InvalidArgumentError(
        "give --image FILE (one or more), --text TEXT (one or more, for text "
        "models) or --random-tensor");
  }
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  v1::PredictRequest request;
  request.set_model_id(model_id);
  for (const std::string& path : images) {
    ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
    request.add_images(std::move(bytes));
  }
  for (const std::string& text : texts) {
    request.add_texts(text);
    images.push_back(absl::StrCat(
        "\"", text.size() > 60 ? absl::StrCat(text.substr(0, 57), "...") : text,
        "\""));
  }
  if (random) {
    // A smoke test of the serving path that needs no image at hand.
    ASSIGN_OR_RETURN(v1::Model model, client->GetModel(model_id));
    const v1::InputSpec& s = model.input_spec();
    ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
    std::mt19937 rng(static_cast<uint32_t>(seed));
    std::uniform_real_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> values(static_cast<size_t>(s.channels()) * s.height() *
                              s.width());
    for (float& v : values) v = dist(rng);
    v1::RawTensor* tensor = request.mutable_tensor();
    for (int64_t d : {int64_t{1}, int64_t{s.channels()}, int64_t{s.height()},
                      int64_t{s.width()}}) {
      tensor->add_shape(d);
    }
    tensor->set_dtype("FP32");
    // Little-endian on every machine we build for.
    tensor->set_contents(reinterpret_cast<const char*>(values.data()),
                         values.size() * sizeof(float));
  }
  *images_out = std::move(images);
  return request;
}

absl::StatusOr<int> PredictCommand(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(int64_t top_k, args.GetInt("top-k", 0));
  ASSIGN_OR_RETURN(int64_t deadline_ms, args.GetInt("deadline-ms", 10000));
  if (top_k < 0 || top_k > 1000) return FlagError("top-k", "must be 0..1000");
  if (deadline_ms < 1) return FlagError("deadline-ms", "must be > 0");
  std::vector<std::string> images;
  ASSIGN_OR_RETURN(v1::PredictRequest request, InferenceInputs(ctx, args, &images));
  request.set_top_k(static_cast<int32_t>(top_k));
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(v1::PredictResponse response,
                   client->Predict(request, absl::Milliseconds(deadline_ms)));
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, response));
    return 0;
  }
  for (int i = 0; i < response.predictions_size(); ++i) {
    std::string source = i < static_cast<int>(images.size())
                             ? images[i]
                             : absl::StrCat("input ", i);
    *ctx.out << source << ":\n";
    std::vector<std::vector<std::string>> rows;
    int rank = 1;
    for (const v1::ClassScore& c : response.predictions(i).top()) {
      rows.push_back({absl::StrCat(rank++), c.label(), absl::StrCat(c.index()),
                      absl::StrFormat("%.4f", c.probability())});
    }
    *ctx.out << FormatTable({"RANK", "CLASS", "INDEX", "PROBABILITY"}, rows);
    for (const v1::TaskPrediction& t : response.predictions(i).tasks()) {
      std::vector<std::vector<std::string>> task_rows;
      int task_rank = 1;
      for (const v1::ClassScore& c : t.top()) {
        task_rows.push_back({absl::StrCat(task_rank++), c.label(),
                             absl::StrCat(c.index()),
                             absl::StrFormat("%.4f", c.probability())});
      }
      *ctx.out << "  head '" << t.task() << "':\n"
               << FormatTable({"RANK", "CLASS", "INDEX", "PROBABILITY"},
                              task_rows);
    }
  }
  return 0;
}

absl::StatusOr<int> EmbedCommand(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(int64_t deadline_ms, args.GetInt("deadline-ms", 10000));
  if (deadline_ms < 1) return FlagError("deadline-ms", "must be > 0");
  std::vector<std::string> images;
  ASSIGN_OR_RETURN(v1::PredictRequest inputs, InferenceInputs(ctx, args, &images));
  v1::EmbedRequest request;
  request.set_model_id(inputs.model_id());
  *request.mutable_images() = std::move(*inputs.mutable_images());
  *request.mutable_texts() = std::move(*inputs.mutable_texts());
  if (inputs.has_tensor()) *request.mutable_tensor() = inputs.tensor();
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  ASSIGN_OR_RETURN(v1::EmbedResponse response,
                   client->Embed(request, absl::Milliseconds(deadline_ms)));
  if (ctx.json) {
    RETURN_IF_ERROR(PrintJson(ctx, response));
    return 0;
  }
  std::vector<std::vector<std::string>> rows;
  for (int i = 0; i < response.embeddings_size(); ++i) {
    const auto& values = response.embeddings(i).values();
    double l2 = 0;
    for (float v : values) l2 += static_cast<double>(v) * v;
    std::vector<std::string> head;
    for (int d = 0; d < std::min(4, values.size()); ++d) {
      head.push_back(absl::StrFormat("%.4f", values[d]));
    }
    rows.push_back({i < static_cast<int>(images.size()) ? images[i]
                                                        : absl::StrCat("input ", i),
                    absl::StrCat(values.size()), absl::StrFormat("%.4f", std::sqrt(l2)),
                    absl::StrCat(absl::StrJoin(head, " "), " ...")});
  }
  *ctx.out << FormatTable({"INPUT", "DIM", "L2 NORM", "FIRST VALUES"}, rows);
  return 0;
}

// --- health, demo ---

absl::StatusOr<int> HealthCommand(Context& ctx, const Args& args) {
  ASSIGN_OR_RETURN(int64_t wait_s, args.GetInt("wait", 0));
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  if (wait_s > 0) {
    RETURN_IF_ERROR(client->WaitUntilHealthy(absl::Seconds(wait_s)));
  } else {
    RETURN_IF_ERROR(client->CheckHealth());
  }
  *ctx.out << ctx.server << ": SERVING\n";
  return 0;
}

absl::StatusOr<int> DemoCommand(Context& ctx, const Args& args) {
  DemoOptions options;
  options.tty = ctx.options->out_is_tty;
  ASSIGN_OR_RETURN(int64_t shots, args.GetInt("shots", options.shots));
  ASSIGN_OR_RETURN(int64_t pretrain_samples,
                   args.GetInt("pretrain-samples", options.pretrain_samples));
  ASSIGN_OR_RETURN(int64_t pretrain_epochs,
                   args.GetInt("pretrain-epochs", options.pretrain_epochs));
  ASSIGN_OR_RETURN(int64_t epochs, args.GetInt("epochs", options.epochs));
  ASSIGN_OR_RETURN(int64_t wait_s, args.GetInt("wait-healthy", 60));
  if (shots < 2 || shots > 6000) {
    return FlagError("shots", "must be in [2, 6000] (validation takes 20%)");
  }
  if (pretrain_samples < 1 || pretrain_samples > 6000) {
    return FlagError("pretrain-samples", "must be in [1, 6000]");
  }
  if (pretrain_epochs < 1 || epochs < 1 || pretrain_epochs > 1000 ||
      epochs > 1000) {
    return FlagError(pretrain_epochs < 1 || pretrain_epochs > 1000
                         ? "pretrain-epochs"
                         : "epochs",
                     "must be in [1, 1000]");
  }
  options.shots = static_cast<int>(shots);
  options.pretrain_samples = static_cast<int>(pretrain_samples);
  options.pretrain_epochs = static_cast<int>(pretrain_epochs);
  options.epochs = static_cast<int>(epochs);
  if (args.Has("seeds")) {
    ASSIGN_OR_RETURN(std::vector<int64_t> seeds, args.GetIntList("seeds"));
    if (seeds.empty()) return FlagError("seeds", "needs at least one seed");
    options.seeds.clear();
    for (int64_t s : seeds) {
      if (s < 0) return FlagError("seeds", "seeds must not be negative");
      options.seeds.push_back(static_cast<uint64_t>(s));
    }
  }
  options.summary_path = args.Get("summary", options.summary_path);
  options.data_dir = args.Get("data-dir", options.data_dir);
  if (args.Has("device")) {
    options.device = args.Get("device");
    if (options.device != "cpu" && options.device != "cuda") {
      return FlagError("device", "must be cpu or cuda");
    }
  }
  ASSIGN_OR_RETURN(Client * client, ctx.GetClient());
  RETURN_IF_ERROR(client->WaitUntilHealthy(absl::Seconds(wait_s)));
  return RunDemo(*client, options, *ctx.out);
}

const std::vector<FlagDef>& GlobalFlags() {
  static const auto* flags =
      new std::vector<FlagDef>{{"server"},     {"json", false},
                               {"timeout"},    {"token_file"},
                               {"tls_ca_file"}};
  return *flags;
}

std::vector<FlagDef> WithCreateFlags() { return JobCreateFlags(); }

const std::vector<Command>& Commands() {
  static const auto* commands = new std::vector<Command>{
      {"dataset",
       "upload",
       "dataset upload --name N (--idx-train-images F --idx-train-labels F "
       "[--idx-test-images F --idx-test-labels F] [--class-names a,b,...] | "
       "--archive F [--test-archive F] | --text-csv F [--test-text-csv F] "
       "[--class-names a,b,...]) [--request-id K]",
       0,
       {{"name"},
        {"text-csv"},
        {"test-text-csv"},
        {"idx-train-images"},
        {"idx-train-labels"},
        {"idx-test-images"},
        {"idx-test-labels"},
        {"class-names"},
        {"archive"},
        {"test-archive"},
        {"request-id"}},
       DatasetUpload},
      {"dataset",
       "list",
       "dataset list [--page-size N --page-token T]",
       0,
       {{"page-size"}, {"page-token"}},
       DatasetList},
      {"dataset", "get", "dataset get ID", 1, {}, DatasetGet},
      {"dataset", "delete", "dataset delete ID", 1, {}, DatasetDelete},
      {"backbone",
       "upload",
       "backbone upload --name N --file F (--spec-json F | --channels C "
       "--height H --width W --mean a,b,c --std a,b,c | --word-vectors) "
       "[--request-id K]   (--word-vectors: a GloVe text or word2vec binary "
       "file, for text datasets)",
       0,
       {{"name"},
        {"file"},
        {"word-vectors", false},
        {"spec-json"},
        {"channels"},
        {"height"},
        {"width"},
        {"mean"},
        {"std"},
        {"request-id"}},
       BackboneUpload},
      {"backbone", "list", "backbone list", 0, {}, BackboneList},
      {"backbone", "get", "backbone get ID", 1, {}, BackboneGet},
      {"backbone",
       "rank",
       "backbone rank --dataset ID [--backbones ID,ID,...] [--classes 5,6,7] "
       "[--shots 20] [--max-test-samples 1000] [--seed N] [--wait-seconds S]"
       "   (scores each backbone's frozen features by a nearest-class-mean "
       "classifier, best first, in seconds)",
       0,
       {{"dataset"},
        {"backbones"},
        {"classes"},
        {"shots"},
        {"max-test-samples"},
        {"seed"},
        {"wait-seconds"}},
       BackboneRank},
      {"job", "create",
       "job create [--spec-json F] [--kind fine_tune|pretrain|few_shot|"
       "domain_adapt|multitask] --dataset ID [--target-dataset ID] "
       "[--domain-weight W] [--task NAME=GROUP:L,L/GROUP:L,... ...] "
       "[--task-weight NAME=W ...] [--classes-weight W] "
       "[--classes 2,3,4] [--samples-per-class N] [--val-fraction F] "
       "[--max-test-samples N] [--backbone ID] [--init pretrained|random] "
       "[--freeze frozen|last_n_blocks|full] [--blocks N] "
       "[--backbone-lr-scale F] [--layer-decay F] [--unfreeze EPOCH:N,...] "
       "[--train-params GLOB,...] [--freeze-params GLOB,...] "
       "[--bn-stats follow|frozen|update] [--optimizer sgd|adamw] [--lr F] "
       "[--momentum F] [--weight-decay F] "
       "[--schedule cosine|constant|step] [--step-epochs N] [--step-gamma F] "
       "[--label-smoothing F] [--grad-clip F] [--early-stop PATIENCE] "
       "[--early-stop-metric val_accuracy|val_loss] "
       "[--feature-cache auto|off] [--augment crop,flip] "
       "[--crop-scale-min F] [--input-fit stretch|center-crop] "
       "[--resize-shorter-side N] [--loader-threads N] [--checkpoint-every SECONDS] [--checkpoint-every-epoch] "
       "[--warmup-epochs N] [--epochs N] [--batch-size N] [--micro-batch-size N] [--shrink-on-oom] [--precision fp32|bf16] [--seed N] "
       "[--priority N] [--device cpu|cuda] [--max-attempts N] "
       "[--keep-checkpoints N] "
       "[--hidden 128,64] [--dropout F] [--pooling mean|max|conv] "
       "[--max-tokens N] [--conv-channels N] [--backbone-name N] "
       "[--base-width N] "
       "[--name N] [--request-id K] [--watch]",
       0, WithCreateFlags(), JobCreate},
      {"job", "get", "job get ID", 1, {}, JobGet},
      {"job",
       "list",
       "job list [--state queued|running|...] [--page-size N --page-token T]",
       0,
       {{"state"}, {"page-size"}, {"page-token"}},
       JobList},
      {"job", "watch", "job watch ID [--after SEQ]", 1, {{"after"}}, JobWatch},
      {"job", "cancel", "job cancel ID", 1, {}, JobCancel},
      {"job", "delete", "job delete ID   (a finished job)", 1, {}, JobDelete},
      {"job", "checkpoints", "job checkpoints ID", 1, {}, JobCheckpoints},
      {"job",
       "metrics",
       "job metrics ID [--plot-curves FILE.png] [--plot-confusion FILE.png] "
       "[--json]",
       1,
       {{"plot-curves"}, {"plot-confusion"}},
       JobMetrics},
      {"job", "compare", kJobCompareUsage, 2, {{"plot"}, {"metric"}},
       JobCompare},
      {"model", "list", "model list", 0, {}, ModelList},
      {"model",
       "create",
       "model create --few-shot --dataset ID --backbone ID [--shots N] "
       "[--classes 5,6,7] [--max-test-samples N] [--seed N] [--name N] "
       "[--request-id K] [--wait-seconds S]   (a nearest-class-mean model on "
       "the backbone's features, no training)",
       0,
       {{"few-shot", false},
        {"dataset"},
        {"backbone"},
        {"shots"},
        {"classes"},
        {"max-test-samples"},
        {"seed"},
        {"name"},
        {"request-id"},
        {"wait-seconds"}},
       ModelCreate},
      {"model",
       "deploy",
       "model deploy ID [--max-batch-size N] [--max-queue-delay-us US] "
       "[--max-queue N]   (batcher settings; unset: the server's flags)",
       1,
       {{"max-batch-size"}, {"max-queue-delay-us"}, {"max-queue"}},
       ModelDeploy},
      {"model", "undeploy", "model undeploy ID", 1, {}, ModelUndeploy},
      {"model", "delete", "model delete ID   (an undeployed model)", 1, {},
       ModelDelete},
      {"model", "get", "model get ID", 1, {}, ModelGet},
      {"model",
       "export",
       "model export ID --out FILE",
       1,
       {{"out"}},
       ModelExport},
      {"predict",
       "",
       "predict --model ID (--image F [--image F ...] | --text T [--text T "
       "...] | --random-tensor [--seed N]) [--top-k K] [--deadline-ms MS]",
       0,
       {{"model"},
        {"image", true, true},
        {"text", true, true},
        {"random-tensor", false},
        {"top-k"},
        {"seed"},
        {"deadline-ms"}},
       PredictCommand},
      {"embed",
       "",
       "embed --model ID (--image F [--image F ...] | --text T [--text T "
       "...] | --random-tensor [--seed N]) [--deadline-ms MS]   (the "
       "backbone's features; --json prints them all)",
       0,
       {{"model"},
        {"image", true, true},
        {"text", true, true},
        {"random-tensor", false},
        {"seed"},
        {"deadline-ms"}},
       EmbedCommand},
      {"health", "", "health [--wait SECONDS]", 0, {{"wait"}}, HealthCommand},
      {"demo",
       "",
       "demo [--shots 10] [--seeds 1,2,3] [--pretrain-samples 1000] "
       "[--pretrain-epochs 3] [--epochs 30] [--summary var/demo_summary.json] "
       "[--data-dir DIR] [--device cpu|cuda] [--wait-healthy SECONDS]",
       0,
       {{"shots"},
        {"seeds"},
        {"pretrain-samples"},
        {"pretrain-epochs"},
        {"epochs"},
        {"summary"},
        {"data-dir"},
        {"device"},
        {"wait-healthy"}},
       DemoCommand},
  };
  return *commands;
}

void PrintUsage(std::ostream& o) {
  o << "usage: tlctl [--server=host:port] [--json] [--timeout=SECONDS] "
       "[--token_file=FILE] [--tls_ca_file=PEM] <command>\n\n"
       "The server defaults to $TLSERVE_SERVER, else 127.0.0.1:50051. The "
       "token (sent as 'authorization: Bearer ...') is the file's content, "
       "else $TLSERVE_TOKEN; --tls_ca_file (else $TLSERVE_TLS_CA_FILE) "
       "turns on TLS.\n\n"
       "commands:\n";
  for (const Command& c : Commands()) o << "  " << c.usage << "\n";
}

}  // namespace

int RunTlctl(const std::vector<std::string>& argv, const RunOptions& options,
             std::ostream& out, std::ostream& err) {
  auto fail = [&](const absl::Status& status) {
    err << "error: " << absl::StatusCodeToString(status.code()) << ": "
        << status.message() << "\n";
    return 1;
  };
  // Global flags may come before the command words; gather them so the
  // command's own parse sees them too.
  std::vector<std::string> rest;
  size_t i = 0;
  for (; i < argv.size() && absl::StartsWith(argv[i], "--"); ++i) {
    if (argv[i] == "--help") {
      PrintUsage(out);
      return 0;
    }
    rest.push_back(argv[i]);
    if ((argv[i] == "--server" || argv[i] == "--timeout" ||
         argv[i] == "--token_file" || argv[i] == "--tls_ca_file") &&
        i + 1 < argv.size()) {
      rest.push_back(argv[++i]);
    }
  }
  if (i >= argv.size() || argv[i] == "help") {
    PrintUsage(i >= argv.size() ? err : out);
    return i >= argv.size() ? 1 : 0;
  }
  const std::string& group = argv[i++];
  const Command* command = nullptr;
  bool group_known = false;
  for (const Command& c : Commands()) {
    if (c.group != group) continue;
    group_known = true;
    if (c.verb.empty() || (i < argv.size() && argv[i] == c.verb)) {
      command = &c;
      break;
    }
  }
  if (command == nullptr) {
    PrintUsage(err);
    return fail(absl::InvalidArgumentError(
        group_known ? absl::StrCat("'", group, "' needs one of the verbs above")
                    : absl::StrCat("unknown command '", group, "'")));
  }
  if (!command->verb.empty()) ++i;
  rest.insert(rest.end(), argv.begin() + static_cast<ptrdiff_t>(i), argv.end());
  std::vector<FlagDef> defs = command->flags;
  defs.insert(defs.end(), GlobalFlags().begin(), GlobalFlags().end());
  defs.push_back({"help", false});
  absl::StatusOr<Args> args = ParseArgs(rest, defs);
  if (!args.ok()) {
    err << "usage: tlctl " << command->usage << "\n";
    return fail(args.status());
  }
  if (args->Has("help")) {
    out << "usage: tlctl " << command->usage << "\n";
    return 0;
  }
  // `predict --image a.png b.png` puts extra files in positional; `job
  // compare` takes two or more ids and checks them itself.
  if (args->positional().size() != command->positional &&
      command->run != PredictCommand && command->run != EmbedCommand &&
      command->run != JobCompare) {
    err << "usage: tlctl " << command->usage << "\n";
    return fail(absl::InvalidArgumentError(
        absl::StrCat("expected ", command->positional, " argument(s), got ",
                     args->positional().size())));
  }

  Context ctx;
  ctx.options = &options;
  ctx.out = &out;
  ctx.err = &err;
  absl::StatusOr<bool> json = args->GetBool("json");
  if (!json.ok()) return fail(json.status());
  ctx.json = *json;
  ctx.server = args->Get("server", options.default_server);
  ctx.token = options.default_token;
  if (args->Has("token_file")) {
    absl::StatusOr<std::string> token = ReadFile(args->Get("token_file", ""));
    if (!token.ok()) {
      return fail(FlagError("token_file", std::string(token.status().message())));
    }
    ctx.token = std::string(absl::StripAsciiWhitespace(*token));
  }
  ctx.tls_ca_file = args->Get("tls_ca_file", options.default_tls_ca_file);
  absl::StatusOr<int64_t> timeout_s = args->GetInt("timeout", 30);
  if (!timeout_s.ok()) return fail(timeout_s.status());
  if (*timeout_s < 1) return fail(FlagError("timeout", "must be >= 1"));
  ctx.timeout = absl::Seconds(*timeout_s);

  absl::StatusOr<int> code = command->run(ctx, *args);
  out.flush();
  if (!code.ok()) return fail(code.status());
  return *code;
}

}  // namespace tlserve::cli
