#ifndef TLSERVE_COMMON_INPUT_FIT_H_
#define TLSERVE_COMMON_INPUT_FIT_H_

// How an image of any size becomes a model's input size (InputSpec.fit):
// stretched, or resized on its shorter side and centre-cropped. Plain C++
// shared by the server (validation), the dataset loader (fitting at load)
// and the worker (training tensors and inference inputs), so every path
// fits an image to the same bytes.

#include <string>

#include "absl/status/status.h"
#include "common/image.h"
#include "tlserve/v1/common.pb.h"
#include "tlserve/v1/job.pb.h"

namespace tlserve {

// The fit's mode with UNSPECIFIED read as STRETCH.
tlserve::v1::InputFit::Mode FitMode(const tlserve::v1::InputSpec& spec);

// RESIZE_CENTER_CROP's shorter side: the fit's own, or the crop's longer
// side * 8 / 7 rounded when it is 0.
int ShorterSide(const tlserve::v1::InputSpec& spec);

// The size an image of height x width is resized to so that its shorter
// side is `side`, the aspect ratio kept (the longer side truncated, as
// torchvision's Resize(int) does).
void ShorterSideSize(int height, int width, int side, int* out_height,
                     int* out_width);

// Checks the fit against a crop of height x width. `field` names it in the
// message ("spec.input_fit", "input_spec.fit").
absl::Status ValidateInputFit(const tlserve::v1::InputFit& fit, int height,
                              int width, const std::string& field);

// The spec a job trains with: `base` (the backbone's, or PRETRAIN's own)
// with the job's input_fit in place of its fit when the job sets one.
tlserve::v1::InputSpec ApplyJobFit(const tlserve::v1::InputSpec& base,
                                   const tlserve::v1::JobSpec& job);

// `image` fitted to spec.height() x spec.width() by the spec's fit (the
// channels unchanged). STRETCH leaves an image of that size as it is;
// RESIZE_CENTER_CROP always resizes and crops, as torchvision does.
Image FitImage(const Image& image, const tlserve::v1::InputSpec& spec);

}  // namespace tlserve

#endif  // TLSERVE_COMMON_INPUT_FIT_H_
