#include "worker/text_trainer.h"

#include <torch/script.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/text_dataset.h"
#include "common/text_tokenizer.h"
#include "common/word_vectors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/test_util.h"
#include "worker/inference_runner.h"
#include "worker/text_model.h"

namespace tlserve::worker {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using tlserve::v1::FreezePolicy;
using tlserve::v1::JobSpec;

// ---------------------------------------------------------------------------
// A synthetic sentiment task with 3-dimensional vectors the test writes:
// positive words near +e1, negative words near -e1, neutral words near e2,
// and distractor words the texts never use. Sentences mix neutral words
// with one to three sentiment words; the label is the sentiment of the
// majority of them, so the mean of a sentence's vectors separates the
// classes and the maximum (which cannot count) does so only for sentences
// without the other sentiment. Texts carry unknown words, punctuation,
// mixed case and typographic apostrophes.

const std::vector<std::string> kPositive = {
    "good", "great", "excellent", "wonderful", "love",
    "happy", "best", "amazing", "superb", "enjoyable"};
const std::vector<std::string> kNegative = {
    "bad", "awful", "terrible", "hate", "worst",
    "poor", "boring", "sad", "horrible", "dull"};
const std::vector<std::string> kNeutral = {
    "the", "a", "movie", "film", "was", "is", "it", "this", "plot",
    "actors", "and", "very", "really", "story", "i", "don't", "ending",
    "music", "of", "to"};
// In the vectors, only in test texts: frozen vectors carry over to them.
const std::vector<std::string> kTestOnlyPositive = {"splendid", "marvelous"};
const std::vector<std::string> kTestOnlyNegative = {"dreadful", "atrocious"};
// Not in the vectors.
const std::vector<std::string> kUnknown = {"zorblax", "qwerty", "florp",
                                           "blargh"};

struct SentimentData {
  std::vector<std::string> words;  // row order of the vectors files
  std::vector<float> values;       // words x 3
  std::string glove_path;
  std::string word2vec_path;
  std::string train_csv;
  std::string test_csv;
  TextDataset train;
  TextDataset test;
  // The test set's majority-class share: what predicting one class gets.
  double test_majority = 0;
};

std::string CsvField(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

// `count` labelled sentences; test sentences may use the test-only words.
std::string SentimentCsv(int count, uint64_t seed, bool test) {
  std::mt19937_64 rng(seed);
  auto pick = [&rng](const std::vector<std::string>& from) {
    return from[std::uniform_int_distribution<size_t>(0, from.size() - 1)(rng)];
  };
  auto chance = [&rng](double p) {
    return std::uniform_real_distribution<double>(0, 1)(rng) < p;
  };
  std::string csv = "text,label\n";
  for (int i = 0; i < count; ++i) {
    const bool positive = chance(0.6);
    const int major = std::uniform_int_distribution<int>(1, 3)(rng);
    const int minor = chance(0.3)
                          ? std::uniform_int_distribution<int>(0, major - 1)(rng)
                          : 0;
    std::vector<std::string> words;
    const int neutral = std::uniform_int_distribution<int>(2, 6)(rng);
    for (int k = 0; k < neutral; ++k) words.push_back(pick(kNeutral));
    auto sentiment = [&](bool pos) {
      if (test && chance(0.3)) {
        return pick(pos ? kTestOnlyPositive : kTestOnlyNegative);
      }
      return pick(pos ? kPositive : kNegative);
    };
    for (int k = 0; k < major; ++k) words.push_back(sentiment(positive));
    for (int k = 0; k < minor; ++k) words.push_back(sentiment(!positive));
    if (chance(0.3)) words.push_back(pick(kUnknown));
    std::shuffle(words.begin(), words.end(), rng);
    std::string text;
    for (size_t k = 0; k < words.size(); ++k) {
      std::string w = words[k];
      if (w == "don't" && chance(0.5)) w = "don\xe2\x80\x99t";
      if (chance(0.1)) {
        for (char& c : w) c = static_cast<char>(std::toupper(c));
      } else if (k == 0 && !w.empty()) {
        w[0] = static_cast<char>(std::toupper(w[0]));
      }
      if (k > 0) text += chance(0.15) ? ", " : (chance(0.05) ? " \xe2\x80\x94 " : " ");
      text += w;
    }
    text += chance(0.5) ? "!" : (chance(0.5) ? "." : "...");
    absl::StrAppend(&csv, CsvField(text), ",",
                    positive ? "positive" : "negative", "\n");
  }
  return csv;
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

const SentimentData& Data() {
  static const SentimentData* data = [] {
    auto* d = new SentimentData;
    std::mt19937_64 rng(7);
    std::normal_distribution<float> noise(0.0f, 1.0f);
    auto add = [&](const std::string& word, std::array<float, 3> center,
                   float sd) {
      d->words.push_back(word);
      for (float c : center) d->values.push_back(c + sd * noise(rng));
    };
    for (const auto& w : kPositive) add(w, {1.0f, 0.2f, 0.0f}, 0.1f);
    for (const auto& w : kNegative) add(w, {-1.0f, 0.2f, 0.0f}, 0.1f);
    for (const auto& w : kNeutral) add(w, {0.0f, 1.0f, 0.0f}, 0.05f);
    for (const auto& w : kTestOnlyPositive) add(w, {1.0f, 0.2f, 0.0f}, 0.1f);
    for (const auto& w : kTestOnlyNegative) add(w, {-1.0f, 0.2f, 0.0f}, 0.1f);
    for (int i = 0; i < 20; ++i) {
      add(absl::StrCat("distractor", i), {0.0f, 0.0f, 1.0f}, 0.5f);
    }
    const std::string dir = testing::MakeTempDir("sentiment");
    std::string glove;
    std::string binary = absl::StrCat(d->words.size(), " 3\n");
    for (size_t r = 0; r < d->words.size(); ++r) {
      absl::StrAppend(&glove, d->words[r]);
      absl::StrAppend(&binary, d->words[r], " ");
      for (int c = 0; c < 3; ++c) {
        const float v = d->values[r * 3 + c];
        absl::StrAppend(&glove, absl::StrFormat(" %.9g", v));
        char bytes[4];
        std::memcpy(bytes, &v, 4);  // little-endian hosts only (x86, arm)
        binary.append(bytes, 4);
      }
      glove += "\n";
      binary += "\n";
    }
    d->glove_path = dir + "/vectors.txt";
    d->word2vec_path = dir + "/vectors.bin";
    WriteFile(d->glove_path, glove);
    WriteFile(d->word2vec_path, binary);
    d->train_csv = SentimentCsv(400, 11, /*test=*/false);
    d->test_csv = SentimentCsv(200, 12, /*test=*/true);
    d->train = ParseTextCsv(d->train_csv).value();
    d->test = ParseTextCsv(d->test_csv).value();
    int64_t ones = 0;
    for (int32_t label : d->test.labels) ones += label;
    const double n = static_cast<double>(d->test.labels.size());
    d->test_majority = std::max<double>(ones, n - ones) / n;
    return d;
  }();
  return *data;
}

WordVectors LoadedVectors() {
  absl::StatusOr<WordVectors> v = LoadWordVectors(Data().glove_path);
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? *std::move(v) : WordVectors();
}

JobSpec BaseSpec() {
  JobSpec spec;
  spec.set_epochs(12);
  spec.set_batch_size(32);
  spec.set_seed(5);
  spec.mutable_optimizer()->set_kind(tlserve::v1::OptimizerSpec::ADAMW);
  spec.mutable_optimizer()->set_learning_rate(0.05f);
  spec.mutable_data()->set_validation_fraction(0.2f);
  spec.mutable_freeze()->set_mode(FreezePolicy::FROZEN);
  return spec;
}

struct JobRun {
  absl::StatusOr<TextTrainOutput> output = absl::UnknownError("not run");
  std::vector<tlserve::v1::EpochMetrics> epochs;
  std::vector<std::string> logs;
  int progress_calls = 0;
};

JobRun Train(const JobSpec& spec, const TextModelOptions& model,
          const std::string& vectors_path = "",
          const TextDataset* train = nullptr,
          const TextDataset* test = &Data().test,
          std::function<bool()> should_stop = nullptr) {
  JobRun run;
  TextTrainInput input;
  input.spec = spec;
  input.model = model;
  input.vectors_path = vectors_path.empty() ? Data().glove_path : vectors_path;
  input.work_dir = testing::MakeTempDir("job");
  input.num_threads = 2;
  TrainerCallbacks callbacks;
  callbacks.on_log = [&run](const std::string& line) {
    run.logs.push_back(line);
  };
  callbacks.on_progress = [&run](const tlserve::v1::Progress&) {
    ++run.progress_calls;
  };
  callbacks.on_epoch_end = [&run](const tlserve::v1::EpochMetrics& m,
                                  const std::string& path) {
    EXPECT_EQ(path, "");
    run.epochs.push_back(m);
    return absl::OkStatus();
  };
  callbacks.should_stop = std::move(should_stop);
  run.output = RunTextTrainingJob(input, train ? *train : Data().train, test,
                                  callbacks);
  return run;
}

TextModelOptions Pooling(TextPooling pooling) {
  TextModelOptions options;
  options.pooling = pooling;
  options.conv_channels = 16;
  return options;
}

torch::jit::Module Load(const std::string& path) {
  return torch::jit::load(path);
}

at::Tensor Embedding(const torch::jit::Module& m) {
  return m.attr("embedding").toTensor();
}

// The vectors as the embedding's rows 2.. hold them.
at::Tensor VectorRows() {
  const SentimentData& d = Data();
  return torch::from_blob(const_cast<float*>(d.values.data()),
                          {static_cast<int64_t>(d.words.size()), 3},
                          torch::kFloat)
      .clone();
}

// Accuracy of a saved model on `data`, encoded with its own vocab.
double AccuracyOf(torch::jit::Module model, const TextDataset& data) {
  model.eval();
  const WordVectors index = VocabIndexOf(model).value();
  const TextVocabulary vocab(index);
  const EncodedTexts encoded =
      EncodeTexts(data.texts, vocab, static_cast<int>(
                                         model.attr("max_tokens").toInt()))
          .value();
  at::NoGradGuard no_grad;
  const at::Tensor predicted =
      model.forward({encoded.ids}).toTensor().argmax(1);
  const at::Tensor labels = torch::tensor(
      std::vector<int64_t>(data.labels.begin(), data.labels.end()));
  return predicted.eq(labels).to(torch::kDouble).mean().item<double>();
}

// ---------------------------------------------------------------------------
// The module.

TEST(TextModelTest, EmbeddingRowsAttributesAndVocab) {
  const WordVectors vectors = LoadedVectors();
  TextModelOptions options;
  options.num_classes = 2;
  options.max_tokens = 40;
  absl::StatusOr<torch::jit::Module> model =
      MakeTextClassifier(vectors, options);
  ASSERT_TRUE(model.ok()) << model.status();
  const at::Tensor emb = Embedding(*model);
  const int64_t v = vectors.size();
  ASSERT_EQ(emb.sizes(), (std::vector<int64_t>{v + 2, 3}));
  EXPECT_TRUE(torch::equal(emb[0], torch::zeros({3})));  // padding
  EXPECT_TRUE(torch::equal(emb[1], torch::zeros({3})));  // unknown
  EXPECT_TRUE(torch::equal(emb.slice(0, 2), VectorRows()));
  EXPECT_FALSE(emb.requires_grad());
  EXPECT_EQ(model->attr("max_tokens").toInt(), 40);
  EXPECT_EQ(model->attr("pooling").toStringRef(), "mean");
  EXPECT_TRUE(model->hasattr("head"));
  EXPECT_FALSE(model->hasattr("conv"));
  EXPECT_EQ(VocabOf(*model).value(), Data().words);

  const WordVectors index = VocabIndexOf(*model).value();
  const TextVocabulary from_model(index);
  const TextVocabulary from_file(vectors);
  for (const char* token : {"great", "the", "don't", "zorblax", "distractor3"}) {
    EXPECT_EQ(from_model.TokenId(token), from_file.TokenId(token)) << token;
  }

  options.train_embedding = true;
  options.pooling = TextPooling::kConv;
  options.conv_channels = 8;
  model = MakeTextClassifier(vectors, options);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE(Embedding(*model).requires_grad());
  EXPECT_EQ(model->attr("pooling").toStringRef(), "conv");
  EXPECT_EQ(model->attr("conv").toModule().attr("weight").toTensor().sizes(),
            (std::vector<int64_t>{8, 3, 3}));
}

TEST(TextModelTest, PoolingMatchesHandComputation) {
  absl::StatusOr<WordVectors> vectors =
      ParseWordVectors("a 1 -2\nb 3 4\nc -5 0.5\n");
  ASSERT_TRUE(vectors.ok()) << vectors.status();
  // ids: a=2 b=3 c=4; row 0: a b c unknown; row 1: b then padding; row 2:
  // padding only; row 3: a then padding (negative in dimension 1, where
  // padding must not count as a 0).
  const at::Tensor ids =
      torch::tensor(std::vector<int64_t>{2, 3, 4, 1, 3, 0, 0, 0, 0, 0, 0, 0,
                                         2, 0, 0, 0},
                    torch::kLong)
          .reshape({4, 4});
  TextModelOptions options;
  options.num_classes = 2;
  options.pooling = TextPooling::kMean;
  torch::jit::Module mean = MakeTextClassifier(*vectors, options).value();
  const at::Tensor m = mean.run_method("features", ids).toTensor();
  // (1 + 3 - 5 + 0) / 4, (-2 + 4 + 0.5 + 0) / 4: the unknown counts.
  EXPECT_TRUE(torch::allclose(
      m, torch::tensor(std::vector<float>{-0.25f, 0.625f, 3, 4, 0, 0, 1, -2})
             .reshape({4, 2})))
      << m;

  options.pooling = TextPooling::kMax;
  torch::jit::Module max = MakeTextClassifier(*vectors, options).value();
  const at::Tensor x = max.run_method("features", ids).toTensor();
  // The unknown token's zero vector takes part: max(-2, 4, 0.5, 0) = 4.
  EXPECT_TRUE(torch::equal(
      x, torch::tensor(std::vector<float>{3, 4, 3, 4, 0, 0, 1, -2})
             .reshape({4, 2})))
      << x;

  options.pooling = TextPooling::kConv;
  options.conv_channels = 5;
  torch::jit::Module conv = MakeTextClassifier(*vectors, options).value();
  const at::Tensor c = conv.run_method("features", ids).toTensor();
  ASSERT_EQ(c.sizes(), (std::vector<int64_t>{4, 5}));
  EXPECT_TRUE(torch::equal(c[2], torch::zeros({5})));  // no tokens
  EXPECT_TRUE((c >= 0).all().item<bool>());
  // Row 1 by hand: conv at b's position sees (0, b, 0).
  const at::Tensor w = conv.attr("conv").toModule().attr("weight").toTensor();
  const at::Tensor bias = conv.attr("conv").toModule().attr("bias").toTensor();
  const at::Tensor by_hand =
      torch::relu(bias + torch::matmul(w.select(2, 1),
                                       torch::tensor(std::vector<float>{3, 4})));
  EXPECT_TRUE(torch::allclose(c[1], by_hand, 1e-5, 1e-6)) << c[1] << by_hand;
  for (torch::jit::Module* model : {&mean, &max, &conv}) {
    const at::Tensor logits = model->forward({ids}).toTensor();
    EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
  }
}

TEST(TextModelTest, AppendedPaddingChangesNothing) {
  // Standard normal vectors: every row has negative components, which
  // padding read as zeros would hide from max pooling.
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::string text;
  for (int w = 0; w < 30; ++w) {
    absl::StrAppend(&text, "w", w);
    for (int d = 0; d < 8; ++d) {
      absl::StrAppend(&text, absl::StrFormat(" %.6f", normal(rng)));
    }
    text += "\n";
  }
  const WordVectors vectors = ParseWordVectors(text).value();
  const int64_t v = vectors.size() + 2;
  // Rows of 1..7 tokens (ids 1..v-1), then padding to width 7.
  std::vector<int64_t> flat;
  for (int r = 0; r < 6; ++r) {
    const int len = 1 + r;
    for (int t = 0; t < 7; ++t) {
      flat.push_back(t < len ? std::uniform_int_distribution<int64_t>(
                                   1, v - 1)(rng)
                             : 0);
    }
  }
  const at::Tensor ids =
      torch::tensor(flat, torch::kLong).reshape({6, 7});
  const at::Tensor wider =
      torch::cat({ids, torch::zeros({6, 9}, torch::kLong)}, 1);
  for (TextPooling pooling :
       {TextPooling::kMean, TextPooling::kMax, TextPooling::kConv}) {
    TextModelOptions options = Pooling(pooling);
    options.num_classes = 3;
    options.hidden_sizes = {8};
    torch::jit::Module model = MakeTextClassifier(vectors, options).value();
    model.eval();
    const at::Tensor a = model.forward({ids}).toTensor();
    const at::Tensor b = model.forward({wider}).toTensor();
    // Equal up to float rounding: the sums of mean pooling may add in
    // another order at another width.
    EXPECT_TRUE(torch::allclose(a, b, 1e-6, 1e-7))
        << TextPoolingName(pooling) << "\n" << a << "\n" << b;
    const at::Tensor fa = model.run_method("features", ids).toTensor();
    EXPECT_TRUE(torch::allclose(
        fa, model.run_method("features", wider).toTensor(), 1e-6, 1e-7))
        << TextPoolingName(pooling);
    // Alone (no padding at all), each row gives what it gave in the batch.
    for (int64_t r = 0; r < 6; ++r) {
      const at::Tensor row = ids.slice(0, r, r + 1).slice(1, 0, r + 1);
      const at::Tensor alone = model.forward({row}).toTensor();
      const at::Tensor alone_features =
          model.run_method("features", row).toTensor();
      // A convolution over another length may take another kernel path.
      EXPECT_TRUE(torch::allclose(alone_features[0], fa[r], 1e-5, 1e-6))
          << TextPoolingName(pooling) << " row " << r << ": largest difference "
          << (alone_features[0] - fa[r]).abs().max().item<float>();
      EXPECT_TRUE(torch::allclose(alone[0], a[r], 1e-5, 1e-6))
          << TextPoolingName(pooling) << " row " << r << ": largest difference "
          << (alone[0] - a[r]).abs().max().item<float>();
    }
  }
}

TEST(TextModelTest, SavedModelLoadsWithVocabAndSameLogits) {
  const WordVectors vectors = LoadedVectors();
  TextModelOptions options = Pooling(TextPooling::kConv);
  options.num_classes = 2;
  options.hidden_sizes = {4};
  options.max_tokens = 17;
  torch::jit::Module model = MakeTextClassifier(vectors, options).value();
  model.eval();
  const std::string path = testing::MakeTempDir("save") + "/model.pt";
  model.save(path);
  torch::jit::Module loaded = Load(path);
  EXPECT_EQ(VocabOf(loaded).value(), Data().words);
  EXPECT_EQ(loaded.attr("max_tokens").toInt(), 17);
  EXPECT_EQ(loaded.attr("pooling").toStringRef(), "conv");
  const TextVocabulary vocab(vectors);
  const EncodedTexts encoded =
      EncodeTexts(Data().test.texts, vocab, 17).value();
  at::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(model.forward({encoded.ids}).toTensor(),
                           loaded.forward({encoded.ids}).toTensor()));
  EXPECT_TRUE(torch::equal(model.run_method("features", encoded.ids).toTensor(),
                           loaded.run_method("features", encoded.ids).toTensor()));
}

TEST(TextModelTest, EncodeTextsPadsToTheLongestRowAndCaps) {
  const WordVectors vectors = LoadedVectors();
  const TextVocabulary vocab(vectors);
  const std::vector<std::string> texts = {"Great movie!", "zorblax",
                                          "... !!!", "the the the the"};
  absl::StatusOr<EncodedTexts> e = EncodeTexts(texts, vocab, 256);
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_EQ(e->ids.sizes(), (std::vector<int64_t>{4, 4}));
  const int64_t great = vocab.TokenId("great");
  const int64_t movie = vocab.TokenId("movie");
  const int64_t the = vocab.TokenId("the");
  EXPECT_TRUE(torch::equal(
      e->ids, torch::tensor(std::vector<int64_t>{great, movie, 0, 0,  //
                                                 1, 0, 0, 0,          //
                                                 0, 0, 0, 0,          //
                                                 the, the, the, the})
                  .reshape({4, 4})));
  EXPECT_EQ(e->tokens, 7);
  EXPECT_EQ(e->unknown_tokens, 1);

  e = EncodeTexts(texts, vocab, 2);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->ids.sizes(), (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(e->tokens, 5);

  // No tokens anywhere: one column of padding.
  e = EncodeTexts(std::vector<std::string>{"", "?!"}, vocab, 8);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->ids.sizes(), (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(EncodeTexts(texts, vocab, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TextModelTest, BadOptionsAreRefused) {
  const WordVectors vectors = LoadedVectors();
  TextModelOptions ok;
  ok.num_classes = 2;
  auto code = [&vectors](const TextModelOptions& o) {
    return MakeTextClassifier(vectors, o).status();
  };
  TextModelOptions o = ok;
  o.num_classes = 0;
  EXPECT_THAT(code(o).message(), HasSubstr("classes"));
  o = ok;
  o.max_tokens = 0;
  EXPECT_THAT(code(o).message(), HasSubstr("max_tokens"));
  o = ok;
  o.pooling = TextPooling::kConv;
  o.conv_channels = 0;
  EXPECT_THAT(code(o).message(), HasSubstr("conv_channels"));
  o = ok;
  o.dropout = 1.5;
  EXPECT_EQ(code(o).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeTextClassifier(WordVectors(), ok).status().code(),
            absl::StatusCode::kInvalidArgument);
  torch::jit::Module plain("__torch__.tlserve.test.Plain");
  EXPECT_EQ(VocabOf(plain).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseTextPooling("max").value(), TextPooling::kMax);
  EXPECT_THAT(ParseTextPooling("sum").status().message(),
              HasSubstr("mean, max, conv"));
}

// ---------------------------------------------------------------------------
// Training.

TEST(TextTrainerTest, FrozenMeanPoolingLearnsSentiment) {
  const JobRun run = Train(BaseSpec(), Pooling(TextPooling::kMean));
  ASSERT_TRUE(run.output.ok()) << run.output.status();
  const TextTrainOutput& out = *run.output;
  const tlserve::v1::JobResult& r = out.result;
  std::cout << "frozen mean: test accuracy " << r.test_accuracy()
            << ", majority baseline " << Data().test_majority
            << ", unknown token rate " << out.unknown_token_rate << ", "
            << r.train_seconds() << " s\n";
  EXPECT_FALSE(out.cancelled);
  EXPECT_GT(r.test_accuracy(), 0.95);
  EXPECT_GT(r.test_accuracy(), Data().test_majority + 0.3);
  EXPECT_EQ(r.test_count(), 200);
  EXPECT_THAT(out.class_names, ElementsAre("negative", "positive"));
  EXPECT_EQ(r.per_class_test_accuracy_size(), 2);
  EXPECT_GT(r.per_class_test_accuracy(0), 0.9);
  EXPECT_GT(r.per_class_test_accuracy(1), 0.9);
  EXPECT_EQ(r.feature_dim(), 3);
  EXPECT_EQ(r.best_epoch(), 12);
  EXPECT_TRUE(r.feature_cache().used());
  EXPECT_GT(r.train_seconds(), 0);
  // The documented tokenisation met the texts' typography: every token is
  // a word of the vectors ("Don’t", "GREAT", "plot — ending" found their
  // rows) or one of the made-up words, and the rate counts exactly those.
  EXPECT_THAT(Data().train_csv, HasSubstr("don\xe2\x80\x99t"));
  EXPECT_THAT(Data().train_csv, HasSubstr(" \xe2\x80\x94 "));
  const WordVectors vectors = LoadedVectors();
  int64_t tokens = 0;
  int64_t unknown = 0;
  for (const TextDataset* data : {&Data().train, &Data().test}) {
    for (const std::string& text : data->texts) {
      for (const std::string& token : Tokenize(text)) {
        ++tokens;
        if (vectors.Find(token) >= 0) continue;
        ++unknown;
        EXPECT_THAT(kUnknown, Contains(token)) << text;
      }
    }
  }
  EXPECT_GT(unknown, 0);
  EXPECT_DOUBLE_EQ(out.unknown_token_rate,
                   static_cast<double>(unknown) / static_cast<double>(tokens));
  ASSERT_EQ(run.epochs.size(), 12u);
  EXPECT_EQ(run.epochs.front().epoch(), 1);
  EXPECT_EQ(run.epochs.back().epoch(), 12);
  EXPECT_LT(run.epochs.back().train_loss(), run.epochs.front().train_loss());
  EXPECT_GT(run.epochs.back().val_accuracy(), 0.9);
  EXPECT_EQ(run.epochs.back().per_class_val_accuracy_size(), 2);
  EXPECT_GT(run.epochs.back().samples_per_second(), 0);
  EXPECT_FLOAT_EQ(run.epochs.back().learning_rate(), 0.05f);
  // About 320 training texts in batches of 32, every epoch.
  EXPECT_GE(run.progress_calls, 12 * 10);
  EXPECT_LE(run.progress_calls, 12 * 11);

  // The export: the trained model, frozen vectors bit for bit, its vocab.
  torch::jit::Module model = Load(out.artifact_path);
  EXPECT_FALSE(model.is_training());
  EXPECT_EQ(VocabOf(model).value(), Data().words);
  const at::Tensor emb = Embedding(model);
  EXPECT_TRUE(torch::equal(emb.slice(0, 2), VectorRows()));
  EXPECT_TRUE(torch::equal(emb.slice(0, 0, 2), torch::zeros({2, 3})));
  EXPECT_NEAR(AccuracyOf(model, Data().test), r.test_accuracy(), 1e-6);
}

TEST(TextTrainerTest, MaxAndConvPoolingLearn) {
  JobSpec spec = BaseSpec();
  spec.set_epochs(15);
  for (TextPooling pooling : {TextPooling::kMax, TextPooling::kConv}) {
    const JobRun run = Train(spec, Pooling(pooling));
    ASSERT_TRUE(run.output.ok()) << run.output.status();
    const tlserve::v1::JobResult& r = run.output->result;
    std::cout << TextPoolingName(pooling) << ": test accuracy "
              << r.test_accuracy() << ", first/last train loss "
              << run.epochs.front().train_loss() << "/"
              << run.epochs.back().train_loss() << ", " << r.train_seconds()
              << " s\n";
    EXPECT_GT(r.test_accuracy(), Data().test_majority + 0.15)
        << TextPoolingName(pooling);
    EXPECT_LT(run.epochs.back().train_loss(),
              0.7 * run.epochs.front().train_loss());
    EXPECT_EQ(r.feature_dim(), pooling == TextPooling::kConv ? 16 : 3);
    EXPECT_EQ(r.feature_cache().used(), pooling == TextPooling::kMax);
    torch::jit::Module model = Load(run.output->artifact_path);
    EXPECT_EQ(model.attr("pooling").toStringRef(), TextPoolingName(pooling));
    // FROZEN: the conv trains, the vectors do not.
    EXPECT_TRUE(torch::equal(Embedding(model).slice(0, 2), VectorRows()));
    EXPECT_NEAR(AccuracyOf(model, Data().test), r.test_accuracy(), 1e-6);
  }
}

TEST(TextTrainerTest, FullTrainingMovesSeenRowsOnly) {
  JobSpec spec = BaseSpec();
  spec.mutable_freeze()->set_mode(FreezePolicy::FULL);
  spec.mutable_freeze()->set_backbone_lr_scale(0.5f);
  spec.mutable_optimizer()->set_weight_decay(0.01f);
  spec.mutable_schedule()->set_kind(tlserve::v1::ScheduleSpec::COSINE);
  const JobRun run = Train(spec, Pooling(TextPooling::kMean));
  ASSERT_TRUE(run.output.ok()) << run.output.status();
  std::cout << "full mean: test accuracy "
            << run.output->result.test_accuracy() << "\n";
  EXPECT_GT(run.output->result.test_accuracy(), Data().test_majority + 0.2);
  EXPECT_FALSE(run.output->result.feature_cache().used());
  EXPECT_EQ(run.epochs.back().trainable_blocks_size(), 1);

  torch::jit::Module model = Load(run.output->artifact_path);
  const at::Tensor emb = Embedding(model);
  const at::Tensor before = VectorRows();
  EXPECT_TRUE(torch::equal(emb[0], torch::zeros({3})));  // padding
  std::set<std::string> seen;
  for (const std::string& text : Data().train.texts) {
    for (const std::string& token : Tokenize(text)) seen.insert(token);
  }
  int moved = 0;
  int kept = 0;
  for (size_t r = 0; r < Data().words.size(); ++r) {
    const bool equal = torch::equal(emb[r + 2], before[r]);
    if (seen.count(Data().words[r]) > 0) {
      EXPECT_FALSE(equal) << Data().words[r] << " trained but did not move";
      moved += !equal;
    } else {
      // Never in a training text: no gradient, and no weight decay on
      // the embedding.
      EXPECT_TRUE(equal) << Data().words[r] << " moved without data";
      kept += equal;
    }
  }
  EXPECT_EQ(moved, 40);  // every positive, negative and neutral word
  EXPECT_EQ(kept, 24);   // test-only words and distractors
}

TEST(TextTrainerTest, SameSeedSameRunAndWord2VecBinaryTheSame) {
  JobSpec spec = BaseSpec();
  spec.set_epochs(4);
  spec.mutable_freeze()->set_mode(FreezePolicy::FULL);
  spec.mutable_head()->add_hidden_sizes(8);
  spec.mutable_head()->set_dropout(0.3f);
  spec.set_label_smoothing(0.1f);
  spec.set_grad_clip_norm(1.0f);
  const TextModelOptions conv = Pooling(TextPooling::kConv);
  const JobRun a = Train(spec, conv);
  const JobRun b = Train(spec, conv);
  const JobRun binary = Train(spec, conv, Data().word2vec_path);
  JobSpec other_seed = spec;
  other_seed.set_seed(6);
  const JobRun c = Train(other_seed, conv);
  for (const JobRun* run : {&a, &b, &binary, &c}) {
    ASSERT_TRUE(run->output.ok()) << run->output.status();
    ASSERT_EQ(run->epochs.size(), 4u);
  }
  for (const JobRun* run : {&b, &binary}) {
    for (size_t e = 0; e < a.epochs.size(); ++e) {
      EXPECT_EQ(run->epochs[e].train_loss(), a.epochs[e].train_loss()) << e;
      EXPECT_EQ(run->epochs[e].val_loss(), a.epochs[e].val_loss()) << e;
      EXPECT_EQ(run->epochs[e].val_accuracy(), a.epochs[e].val_accuracy());
    }
    EXPECT_EQ(run->output->result.test_loss(), a.output->result.test_loss());
    const auto sa = testing::NamedState(Load(a.output->artifact_path));
    const auto sb = testing::NamedState(Load(run->output->artifact_path));
    ASSERT_EQ(sa.size(), sb.size());
    for (size_t i = 0; i < sa.size(); ++i) {
      EXPECT_TRUE(torch::equal(sa[i].second, sb[i].second)) << sa[i].first;
    }
  }
  EXPECT_NE(c.epochs.back().train_loss(), a.epochs.back().train_loss());
}

TEST(TextTrainerTest, SgdAndClassSubsetAndValidationAsTest) {
  JobSpec spec = BaseSpec();
  spec.mutable_optimizer()->set_kind(tlserve::v1::OptimizerSpec::SGD);
  spec.mutable_optimizer()->set_learning_rate(0.5f);
  spec.mutable_data()->add_class_subset(1);  // positive first
  spec.mutable_data()->add_class_subset(0);
  const JobRun run = Train(spec, Pooling(TextPooling::kMean), "", nullptr,
                        /*test=*/nullptr);
  ASSERT_TRUE(run.output.ok()) << run.output.status();
  EXPECT_THAT(run.output->class_names, ElementsAre("positive", "negative"));
  // No test set: the validation split (20% of 400) is the test.
  EXPECT_NEAR(run.output->result.test_count(), 80, 1);
  EXPECT_EQ(run.output->result.test_accuracy(),
            run.epochs.back().val_accuracy());
  EXPECT_GT(run.output->result.test_accuracy(), 0.9);
  // Logit 0 is now "positive": the model agrees with relabelled data.
  TextDataset swapped = Data().test;
  for (int32_t& label : swapped.labels) label = 1 - label;
  EXPECT_GT(AccuracyOf(Load(run.output->artifact_path), swapped), 0.9);
}

TEST(TextTrainerTest, PythonLoadsTheExportWithItsVocab) {
  if (!testing::PythonTorchAvailable()) {
    GTEST_SKIP() << "/usr/bin/python3 has no torch";
  }
  JobSpec spec = BaseSpec();
  spec.set_epochs(2);
  const JobRun run = Train(spec, Pooling(TextPooling::kConv));
  ASSERT_TRUE(run.output.ok()) << run.output.status();
  torch::jit::Module model = Load(run.output->artifact_path);
  const WordVectors index = VocabIndexOf(model).value();
  const TextVocabulary vocab(index);
  const std::vector<std::string> texts(Data().test.texts.begin(),
                                       Data().test.texts.begin() + 4);
  const EncodedTexts encoded = EncodeTexts(texts, vocab, 256).value();
  at::NoGradGuard no_grad;
  const at::Tensor logits = model.forward({encoded.ids}).toTensor();
  std::vector<std::string> rows;
  for (int64_t r = 0; r < encoded.ids.size(0); ++r) {
    std::vector<int64_t> row;
    for (int64_t t = 0; t < encoded.ids.size(1); ++t) {
      row.push_back(encoded.ids[r][t].item<int64_t>());
    }
    rows.push_back(absl::StrCat("[", absl::StrJoin(row, ", "), "]"));
  }
  const std::string script = absl::StrCat(
      "import torch\n"
      "m = torch.jit.load('", run.output->artifact_path, "')\n"
      "print('VOCAB ' + '|'.join(m.vocab))\n"
      "print('POOLING', m.pooling, m.max_tokens)\n"
      "ids = torch.tensor([", absl::StrJoin(rows, ", "),
      "], dtype=torch.long)\n"
      "with torch.no_grad():\n"
      "    out = m(ids)\n"
      "print('LOGITS ' + ' '.join('%.7g' % v for v in out.flatten().tolist()))"
      "\n");
  std::string output;
  ASSERT_EQ(testing::RunPython(script, &output), 0) << output;
  std::vector<std::string> logit_text;
  for (absl::string_view line : absl::StrSplit(output, '\n')) {
    if (absl::ConsumePrefix(&line, "VOCAB ")) {
      EXPECT_EQ(std::vector<std::string>(absl::StrSplit(line, '|')),
                Data().words);
    } else if (absl::ConsumePrefix(&line, "POOLING ")) {
      EXPECT_EQ(line, "conv 256");
    } else if (absl::ConsumePrefix(&line, "LOGITS ")) {
      logit_text = absl::StrSplit(line, ' ');
    }
  }
  const at::Tensor flat = logits.flatten();
  ASSERT_EQ(static_cast<int64_t>(logit_text.size()), flat.numel()) << output;
  for (int64_t i = 0; i < flat.numel(); ++i) {
    EXPECT_NEAR(std::stod(logit_text[i]), flat[i].item<double>(), 1e-5) << i;
  }
}

TEST(TextTrainerTest, ShouldStopCancels) {
  int polls = 0;
  const JobRun run = Train(BaseSpec(), Pooling(TextPooling::kConv), "", nullptr,
                        &Data().test, [&polls] { return ++polls > 5; });
  ASSERT_TRUE(run.output.ok()) << run.output.status();
  EXPECT_TRUE(run.output->cancelled);
  EXPECT_EQ(run.progress_calls, 5);
  EXPECT_TRUE(run.epochs.empty());
  EXPECT_TRUE(run.output->artifact_path.empty());
}

TEST(TextTrainerTest, BadInputsNameTheField) {
  auto expect_invalid = [](const JobRun& run, const std::string& needle) {
    ASSERT_FALSE(run.output.ok()) << needle;
    EXPECT_EQ(run.output.status().code(), absl::StatusCode::kInvalidArgument)
        << run.output.status();
    EXPECT_THAT(run.output.status().message(), HasSubstr(needle));
    std::cout << "refused: " << run.output.status().message() << "\n";
  };
  const TextModelOptions mean = Pooling(TextPooling::kMean);
  TextDataset empty;
  empty.class_names = {"negative", "positive"};
  expect_invalid(Train(BaseSpec(), mean, "", &empty), "train dataset");

  TextDataset one_class = Data().train;
  one_class.class_names = {"only"};
  for (int32_t& label : one_class.labels) label = 0;
  expect_invalid(Train(BaseSpec(), mean, "", &one_class, nullptr),
                 "at least 2");

  JobSpec subset = BaseSpec();
  subset.mutable_data()->add_class_subset(0);
  subset.mutable_data()->add_class_subset(5);
  expect_invalid(Train(subset, mean), "class_subset");
  JobSpec single = BaseSpec();
  single.mutable_data()->add_class_subset(1);
  expect_invalid(Train(single, mean), "class_subset");

  TextDataset other_classes = Data().test;
  other_classes.class_names = {"bad", "good"};
  expect_invalid(Train(BaseSpec(), mean, "", nullptr, &other_classes),
                 "test dataset");

  JobSpec blocks = BaseSpec();
  blocks.mutable_freeze()->set_mode(FreezePolicy::LAST_N_BLOCKS);
  expect_invalid(Train(blocks, mean), "freeze.mode");
  JobSpec early = BaseSpec();
  early.mutable_early_stopping()->set_patience(2);
  expect_invalid(Train(early, mean), "early_stopping");
  JobSpec lr = BaseSpec();
  lr.mutable_optimizer()->set_learning_rate(500);
  expect_invalid(Train(lr, mean), "learning_rate");
  JobSpec fraction = BaseSpec();
  fraction.mutable_data()->set_validation_fraction(1.5f);
  expect_invalid(Train(fraction, mean), "validation_fraction");

  TextModelOptions tokens = mean;
  tokens.max_tokens = 0;
  expect_invalid(Train(BaseSpec(), tokens), "max_tokens");

  // Vectors so large that the logits overflow: the loss is not finite.
  const std::string dir = testing::MakeTempDir("huge");
  std::string huge;
  for (const std::string& w : Data().words) {
    absl::StrAppend(&huge, w, " 3e38 -3e38 3e38\n");
  }
  WriteFile(dir + "/huge.txt", huge);
  expect_invalid(Train(BaseSpec(), mean, dir + "/huge.txt"), "learning_rate");

  // No word of the texts in the vectors: nothing to learn from.
  TextDataset strangers = Data().train;
  for (std::string& text : strangers.texts) text = "zorblax qwerty florp";
  expect_invalid(Train(BaseSpec(), mean, "", &strangers, nullptr),
                 "no token of the texts is in the word vectors");

  // A vectors file that does not parse keeps the parser's message.
  WriteFile(dir + "/bad.txt", "good 1 2 3\nbad 1 2\n");
  const JobRun bad = Train(BaseSpec(), mean, dir + "/bad.txt");
  ASSERT_FALSE(bad.output.ok());
  EXPECT_THAT(bad.output.status().message(), HasSubstr("word vectors"));
}

// ---------------------------------------------------------------------------
// The text job as the worker's connection runs it, and its model served by
// the inference runner.

struct ServedTextModel {
  absl::StatusOr<TrainJobOutput> output = absl::UnknownError("not run");
  tlserve::v1::TextSpec served_as;
};

const ServedTextModel& TrainedForServing() {
  static const ServedTextModel* served = [] {
    auto* s = new ServedTextModel;
    const std::string dir = testing::MakeTempDir("text_job");
    WriteFile(dir + "/train.csv", Data().train_csv);
    WriteFile(dir + "/test.csv", Data().test_csv);
    absl::StatusOr<TextDatasetSplits> data =
        LoadTextDatasetFiles(dir + "/train.csv", dir + "/test.csv", {});
    EXPECT_TRUE(data.ok()) << data.status();
    if (!data.ok()) return s;
    TrainJobInput input;
    input.spec = BaseSpec();
    input.spec.mutable_text()->set_pooling("max");
    input.spec.mutable_text()->set_max_tokens(12);
    input.backbone_path = Data().glove_path;
    input.work_dir = dir;
    input.num_threads = 2;
    s->output = RunTextJob(input, *data, TrainerCallbacks{}, &s->served_as);
    return s;
  }();
  return *served;
}

TEST(TextJobTest, RunTextJobReportsLikeAnImageJobAndHowToServe) {
  const ServedTextModel& served = TrainedForServing();
  ASSERT_TRUE(served.output.ok()) << served.output.status();
  const TrainJobOutput& out = *served.output;
  EXPECT_FALSE(out.cancelled);
  EXPECT_THAT(out.class_names, ElementsAre("negative", "positive"));
  EXPECT_EQ(out.result.test_count(), 200);
  EXPECT_GT(out.result.test_accuracy(), 0.8);
  EXPECT_GT(out.result.unknown_token_rate(), 0);
  EXPECT_FALSE(out.input_spec.has_fit());
  EXPECT_EQ(served.served_as.pooling(), "max");
  EXPECT_EQ(served.served_as.max_tokens(), 12);
  EXPECT_EQ(served.served_as.conv_channels(), 0);
  EXPECT_EQ(Load(out.artifact_path).attr("max_tokens").toInt(), 12);

  // The job's text block is checked like the server checks it.
  tlserve::v1::TextSpec bad;
  bad.set_pooling("avg");
  EXPECT_THAT(std::string(TextModelOptionsOf(bad).status().message()),
              HasSubstr("text.pooling"));
  bad.set_pooling("conv");
  bad.set_max_tokens(-1);
  EXPECT_THAT(std::string(TextModelOptionsOf(bad).status().message()),
              HasSubstr("text.max_tokens -1 is outside"));
  tlserve::v1::TextSpec conv;
  conv.set_pooling("conv");
  absl::StatusOr<TextModelOptions> options = TextModelOptionsOf(conv);
  ASSERT_TRUE(options.ok());
  EXPECT_EQ(options->conv_channels, 256);
  EXPECT_EQ(options->max_tokens, kDefaultMaxTokens);
  EXPECT_EQ(TextSpecOf(*options).conv_channels(), 256);
}

TEST(TextInferenceTest, TextsOfOneBatchAnswerAsTheyWouldAlone) {
  const ServedTextModel& served = TrainedForServing();
  ASSERT_TRUE(served.output.ok()) << served.output.status();
  InferenceRunner runner(InferenceRunner::Options{});
  InferenceRunner::ModelFile file;
  file.model_id = "m-text";
  file.path = served.output->artifact_path;
  file.class_names = served.output->class_names;
  file.text = true;

  const std::vector<std::string> texts = {
      "Great, wonderful film!", "awful", "The plot was dull and boring, I hate it",
      "zorblax qwerty"};
  // One item per text, then all four in two items of one batch: padding
  // the shorter rows must not change any answer.
  std::vector<std::vector<float>> alone;
  for (const std::string& text : texts) {
    tlserve::v1::PredictRequest request;
    request.add_texts(text);
    absl::StatusOr<tlserve::v1::PredictResponse> r = runner.Predict(file, request);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->predictions_size(), 1);
    alone.emplace_back(r->predictions(0).probabilities().begin(),
                       r->predictions(0).probabilities().end());
  }
  EXPECT_GT(alone[0][1], 0.5f);  // positive
  EXPECT_GT(alone[2][0], 0.5f);  // negative
  google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> items;
  tlserve::v1::InferenceItem* first = items.Add();
  first->mutable_request()->add_texts(texts[0]);
  first->mutable_request()->add_texts(texts[1]);
  tlserve::v1::InferenceItem* second = items.Add();
  second->mutable_request()->add_texts(texts[2]);
  second->mutable_request()->add_texts(texts[3]);
  tlserve::v1::InferenceItem* embed = items.Add();
  embed->set_embed(true);
  embed->mutable_request()->add_texts("good");
  tlserve::v1::InferenceItem* image = items.Add();
  image->mutable_request()->add_images("not text");
  std::vector<tlserve::v1::InferenceResult> results = runner.RunBatch({file}, items);
  ASSERT_EQ(results.size(), 4u);
  for (int item = 0; item < 2; ++item) {
    ASSERT_EQ(results[item].code(), 0) << results[item].message();
    const auto& predictions = results[item].prediction().predictions();
    ASSERT_EQ(predictions.size(), 2);
    for (int k = 0; k < 2; ++k) {
      for (int c = 0; c < 2; ++c) {
        EXPECT_NEAR(predictions[k].probabilities(c), alone[item * 2 + k][c], 1e-5);
      }
    }
  }
  ASSERT_EQ(results[2].code(), 0) << results[2].message();
  ASSERT_EQ(results[2].embedding().embeddings_size(), 1);
  EXPECT_EQ(results[2].embedding().embeddings(0).values_size(), 3);
  // Max pooling over one word: its vector.
  const WordVectors vectors = LoadedVectors();
  const int32_t row = vectors.Find("good");
  ASSERT_GE(row, 0);
  EXPECT_NEAR(results[2].embedding().embeddings(0).values(0), vectors.Row(row)[0],
              1e-6);
  EXPECT_EQ(results[3].code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(results[3].message(), HasSubstr("is a text model: send texts"));
}

}  // namespace
}  // namespace tlserve::worker
