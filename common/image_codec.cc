// PNG (libpng) and JPEG (TurboJPEG) codecs plus bilinear resizing.
//
// libpng reports errors by longjmp. Every function that calls setjmp here
// holds only trivially destructible locals, and the C++ objects (vectors,
// strings) live in the callers' frames, which longjmp never unwinds.

#include <png.h>
#include <turbojpeg.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/image.h"

namespace tlserve {
namespace {

constexpr unsigned char kPngMagic[8] = {0x89, 'P',  'N',  'G',
                                        0x0D, 0x0A, 0x1A, 0x0A};
constexpr unsigned char kJpegMagic[3] = {0xFF, 0xD8, 0xFF};

bool HasPrefix(std::string_view bytes, const unsigned char* magic, size_t n) {
  return bytes.size() >= n && std::memcmp(bytes.data(), magic, n) == 0;
}

absl::Status CheckSize(int64_t height, int64_t width,
                       const ImageLimits& limits) {
  if (height <= 0 || width <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("image has empty size ", width, "x", height));
  }
  if (height > limits.max_side || width > limits.max_side) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image is ", width, "x", height, ", larger than the limit of ",
        limits.max_side, " pixels per side"));
  }
  if (height * width > limits.max_pixels) {
    return absl::InvalidArgumentError(
        absl::StrCat("image is ", width, "x", height, " = ", height * width,
                     " pixels, more than the limit of ", limits.max_pixels));
  }
  return absl::OkStatus();
}

// ---- PNG -------------------------------------------------------------------

// Plain C state shared with the libpng callbacks (trivially destructible).
struct PngContext {
  png_structp png = nullptr;
  png_infop info = nullptr;
  const unsigned char* data = nullptr;
  size_t size = 0;
  size_t pos = 0;
  // Where EncodePng's callback appends; owned by the caller.
  std::string* out = nullptr;
  char error[200] = {0};
  png_uint_32 width = 0;
  png_uint_32 height = 0;
  int channels = 0;
};

void PngError(png_structp png, png_const_charp msg) {
  auto* ctx = static_cast<PngContext*>(png_get_error_ptr(png));
  std::snprintf(ctx->error, sizeof(ctx->error), "%s", msg ? msg : "error");
  png_longjmp(png, 1);
}

void PngWarning(png_structp, png_const_charp) {}

void PngRead(png_structp png, png_bytep dst, png_size_t length) {
  auto* ctx = static_cast<PngContext*>(png_get_io_ptr(png));
  if (ctx->size - ctx->pos < length) png_error(png, "truncated PNG data");
  std::memcpy(dst, ctx->data + ctx->pos, length);
  ctx->pos += length;
}

void PngWrite(png_structp png, png_bytep src, png_size_t length) {
  auto* ctx = static_cast<PngContext*>(png_get_io_ptr(png));
  ctx->out->append(reinterpret_cast<const char*>(src), length);
}

void PngFlush(png_structp) {}

// Reads the header only, so the size is checked before any pixel memory.
bool PngReadHeader(PngContext* ctx) {
  if (setjmp(png_jmpbuf(ctx->png))) return false;
  png_set_read_fn(ctx->png, ctx, PngRead);
  png_read_info(ctx->png, ctx->info);
  ctx->width = png_get_image_width(ctx->png, ctx->info);
  ctx->height = png_get_image_height(ctx->png, ctx->info);
  // Gray (with or without alpha) -> 1 channel, anything in colour -> 3.
  ctx->channels =
      (png_get_color_type(ctx->png, ctx->info) & PNG_COLOR_MASK_COLOR) ? 3 : 1;
  return true;
}

// Sets up transforms to 8-bit gray or RGB and reads every row.
bool PngReadRows(PngContext* ctx, png_bytepp rows) {
  if (setjmp(png_jmpbuf(ctx->png))) return false;
  int color_type = png_get_color_type(ctx->png, ctx->info);
  int bit_depth = png_get_bit_depth(ctx->png, ctx->info);
  if (bit_depth == 16) png_set_strip_16(ctx->png);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(ctx->png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) {
    png_set_expand_gray_1_2_4_to_8(ctx->png);
  }
  // Alpha (real or from tRNS) is dropped, not composited.
  png_set_strip_alpha(ctx->png);
  png_set_interlace_handling(ctx->png);
  png_read_update_info(ctx->png, ctx->info);
  if (png_get_rowbytes(ctx->png, ctx->info) !=
      static_cast<size_t>(ctx->width) * ctx->channels) {
    png_error(ctx->png, "unexpected row size after conversion to 8 bits");
  }
  png_read_image(ctx->png, rows);
  // Reading to IEND catches truncation and CRC errors after the pixels.
  png_read_end(ctx->png, nullptr);
  return true;
}

absl::StatusOr<Image> DecodePng(std::string_view bytes,
                                const ImageLimits& limits) {
  PngContext ctx;
  ctx.data = reinterpret_cast<const unsigned char*>(bytes.data());
  ctx.size = bytes.size();
  ctx.png =
      png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, PngError, PngWarning);
  if (ctx.png == nullptr) return absl::ResourceExhaustedError("libpng init");
  ctx.info = png_create_info_struct(ctx.png);
  absl::Cleanup destroy = [&ctx] {
    png_destroy_read_struct(&ctx.png, ctx.info ? &ctx.info : nullptr, nullptr);
  };
  if (ctx.info == nullptr) return absl::ResourceExhaustedError("libpng init");
  if (!PngReadHeader(&ctx)) {
    return absl::InvalidArgumentError(absl::StrCat("corrupt PNG: ", ctx.error));
  }
  if (absl::Status s = CheckSize(ctx.height, ctx.width, limits); !s.ok()) {
    return s;
  }
  Image image;
  image.height = static_cast<int>(ctx.height);
  image.width = static_cast<int>(ctx.width);
  image.channels = ctx.channels;
  const size_t row_bytes = static_cast<size_t>(image.width) * image.channels;
  image.pixels.resize(row_bytes * image.height);
  std::vector<png_bytep> rows(image.height);
  for (int y = 0; y < image.height; ++y) {
    rows[y] = image.pixels.data() + row_bytes * y;
  }
  if (!PngReadRows(&ctx, rows.data())) {
    return absl::InvalidArgumentError(absl::StrCat("corrupt PNG: ", ctx.error));
  }
  return image;
}

bool PngWriteAll(PngContext* ctx, const Image* image, png_bytepp rows) {
  if (setjmp(png_jmpbuf(ctx->png))) return false;
  png_set_write_fn(ctx->png, ctx, PngWrite, PngFlush);
  int color_type = image->channels == 1   ? PNG_COLOR_TYPE_GRAY
                   : image->channels == 3 ? PNG_COLOR_TYPE_RGB
                                          : PNG_COLOR_TYPE_RGB_ALPHA;
  png_set_IHDR(ctx->png, ctx->info, static_cast<png_uint_32>(image->width),
               static_cast<png_uint_32>(image->height), 8, color_type,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(ctx->png, ctx->info);
  png_write_image(ctx->png, rows);
  png_write_end(ctx->png, nullptr);
  return true;
}

// ---- JPEG ------------------------------------------------------------------

absl::StatusOr<Image> DecodeJpeg(std::string_view bytes,
                                 const ImageLimits& limits) {
  tjhandle tj = tjInitDecompress();
  if (tj == nullptr) return absl::ResourceExhaustedError("TurboJPEG init");
  absl::Cleanup destroy = [tj] { tjDestroy(tj); };
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  const auto size = static_cast<unsigned long>(bytes.size());
  int width = 0, height = 0, subsamp = 0, colorspace = 0;
  if (tjDecompressHeader3(tj, data, size, &width, &height, &subsamp,
                          &colorspace) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("corrupt JPEG: ", tjGetErrorStr2(tj)));
  }
  if (absl::Status s = CheckSize(height, width, limits); !s.ok()) return s;
  Image image;
  image.height = height;
  image.width = width;
  image.channels = colorspace == TJCS_GRAY ? 1 : 3;
  image.pixels.resize(static_cast<size_t>(width) * height * image.channels);
  // Warnings (e.g. premature end of data) count as errors: a truncated
  // upload must not train on gray filler.
  if (tjDecompress2(tj, data, size, image.pixels.data(), width, 0, height,
                    image.channels == 1 ? TJPF_GRAY : TJPF_RGB,
                    TJFLAG_STOPONWARNING) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("corrupt JPEG: ", tjGetErrorStr2(tj)));
  }
  return image;
}

}  // namespace

absl::StatusOr<Image> DecodeImage(std::string_view bytes,
                                  const ImageLimits& limits) {
  if (HasPrefix(bytes, kPngMagic, sizeof(kPngMagic))) {
    return DecodePng(bytes, limits);
  }
  if (HasPrefix(bytes, kJpegMagic, sizeof(kJpegMagic))) {
    return DecodeJpeg(bytes, limits);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("not a PNG or JPEG image (", bytes.size(),
                   " bytes, no PNG or JPEG signature at the start)"));
}

absl::StatusOr<std::string> EncodePng(const Image& image) {
  if (image.channels != 1 && image.channels != 3 && image.channels != 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EncodePng: ", image.channels, " channels; want 1, 3 or 4"));
  }
  if (image.height <= 0 || image.width <= 0 ||
      image.pixels.size() !=
          static_cast<size_t>(image.height) * image.width * image.channels) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EncodePng: ", image.pixels.size(), " bytes of pixels for ",
        image.height, "x", image.width, "x", image.channels));
  }
  std::string out;
  PngContext ctx;
  ctx.out = &out;
  ctx.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &ctx, PngError,
                                    PngWarning);
  if (ctx.png == nullptr) return absl::ResourceExhaustedError("libpng init");
  ctx.info = png_create_info_struct(ctx.png);
  absl::Cleanup destroy = [&ctx] {
    png_destroy_write_struct(&ctx.png, ctx.info ? &ctx.info : nullptr);
  };
  if (ctx.info == nullptr) return absl::ResourceExhaustedError("libpng init");
  size_t row_bytes = static_cast<size_t>(image.width) * image.channels;
  std::vector<png_bytep> rows(image.height);
  for (int y = 0; y < image.height; ++y) {
    // libpng's API is not const-correct; it only reads the rows.
    rows[y] = const_cast<png_bytep>(image.pixels.data() + row_bytes * y);
  }
  if (!PngWriteAll(&ctx, &image, rows.data())) {
    return absl::InternalError(absl::StrCat("EncodePng: ", ctx.error));
  }
  return out;
}

Image ResizeBilinear(const Image& image, int height, int width) {
  Image out;
  if (height <= 0 || width <= 0 || image.height <= 0 || image.width <= 0 ||
      image.channels <= 0) {
    return out;
  }
  out.height = height;
  out.width = width;
  out.channels = image.channels;
  if (height == image.height && width == image.width) {
    out.pixels = image.pixels;
    return out;
  }
  const int c = image.channels;
  out.pixels.resize(static_cast<size_t>(height) * width * c);
  // Pixel centres aligned as in PyTorch's align_corners=False.
  const float sy = static_cast<float>(image.height) / height;
  const float sx = static_cast<float>(image.width) / width;
  std::vector<int> x0(width), x1(width);
  std::vector<float> wx(width);
  for (int x = 0; x < width; ++x) {
    float fx = std::max(0.0f, (x + 0.5f) * sx - 0.5f);
    x0[x] = std::min(static_cast<int>(fx), image.width - 1);
    x1[x] = std::min(x0[x] + 1, image.width - 1);
    wx[x] = fx - x0[x];
  }
  const uint8_t* src = image.pixels.data();
  for (int y = 0; y < height; ++y) {
    float fy = std::max(0.0f, (y + 0.5f) * sy - 0.5f);
    int y0 = std::min(static_cast<int>(fy), image.height - 1);
    int y1 = std::min(y0 + 1, image.height - 1);
    float wy = fy - y0;
    const uint8_t* r0 = src + static_cast<size_t>(y0) * image.width * c;
    const uint8_t* r1 = src + static_cast<size_t>(y1) * image.width * c;
    uint8_t* dst = out.pixels.data() + static_cast<size_t>(y) * width * c;
    for (int x = 0; x < width; ++x) {
      for (int k = 0; k < c; ++k) {
        float top = r0[x0[x] * c + k] * (1 - wx[x]) + r0[x1[x] * c + k] * wx[x];
        float bot = r1[x0[x] * c + k] * (1 - wx[x]) + r1[x1[x] * c + k] * wx[x];
        float v = top * (1 - wy) + bot * wy;
        dst[x * c + k] =
            static_cast<uint8_t>(std::clamp(std::lround(v), 0L, 255L));
      }
    }
  }
  return out;
}

}  // namespace tlserve
