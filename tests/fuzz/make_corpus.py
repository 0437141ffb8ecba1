#!/usr/bin/python3
"""Writes the seed corpus of the fuzz targets into tests/fuzz/corpus/.

Small real inputs, valid and a few invalid ones, so that fuzzing starts
past the magic bytes: IDX files (raw and gzip), PNG and JPEG images of
every colour type the decoder handles, image-folder tars, TorchScript-like
zips and serialized JobSpecs (protoc --encode). Run it again only to
change the seeds; scripts/fuzz.sh merges found inputs next to these.
Needs /usr/bin/python3 with PIL, and protoc.
"""

import gzip
import io
import os
import struct
import subprocess
import sys
import tarfile
import zipfile

from PIL import Image

ROOT = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(ROOT))
CORPUS = os.path.join(ROOT, "corpus")


def write(target, name, data):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def idx(dims, data):
    return bytes([0, 0, 8, len(dims)]) + b"".join(
        struct.pack(">I", d) for d in dims) + bytes(data)


def gz(data):
    # mtime=0: the same bytes on every run.
    return gzip.compress(data, mtime=0)


def pattern(w, h, channels):
    return bytes((x * 37 + y * 11 + c * 90) % 256
                 for y in range(h) for x in range(w) for c in range(channels))


def png(mode, w=6, h=5, **kw):
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}.get(mode)
    if mode == "P":
        img = Image.frombytes("L", (w, h), pattern(w, h, 1)).convert(
            "P", palette=Image.ADAPTIVE, colors=8)
    elif mode == "I;16":
        img = Image.frombytes("I;16", (w, h), pattern(w, h, 2))
    else:
        img = Image.frombytes(mode, (w, h), pattern(w, h, channels))
    out = io.BytesIO()
    img.save(out, "PNG", **kw)
    return out.getvalue()


def jpeg(mode, w=8, h=8, **kw):
    channels = {"L": 1, "RGB": 3}[mode]
    img = Image.frombytes(mode, (w, h), pattern(w, h, channels))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=80, **kw)
    return out.getvalue()


def tar(entries, mode="w"):
    """entries: (name, bytes) for files, (name, None) for folders,
    (name, ('sym'|'hard', target)) for links."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=tarfile.GNU_FORMAT) as t:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if data is None:
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            elif isinstance(data, tuple):
                info.type = tarfile.SYMTYPE if data[0] == "sym" else tarfile.LNKTYPE
                info.linkname = data[1]
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zipped(entries, compression=zipfile.ZIP_STORED):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as z:
        for name, data in entries:
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data,
                       compress_type=compression)
    return out.getvalue()


def job_spec(text):
    return subprocess.run(
        ["protoc", "--encode=tlserve.v1.JobSpec",
         "--proto_path=" + os.path.join(SOURCE, "proto"),
         "tlserve/v1/job.proto"],
        input=text.encode(), stdout=subprocess.PIPE, check=True).stdout


def main():
    # ---- idx
    images = idx([3, 4, 4], pattern(4, 4, 3))
    labels = idx([10], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    write("idx", "images_3x4x4", images)
    write("idx", "labels_10", labels)
    write("idx", "images_3x4x4.gz", gz(images))
    write("idx", "labels_10.gz", gz(labels))
    write("idx", "bad_magic", b"\x01\x02\x08\x01\x00\x00\x00\x01\x07")
    write("idx", "float_type", bytes([0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0]))
    write("idx", "short_data", idx([2, 2], [1, 2, 3]))
    write("idx", "truncated.gz", gz(images)[:-9])
    # A gzip trailer claiming 4 GiB after gunzip (idx_fuzzer's first find:
    # ParseIdx allocated the claimed size up front).
    write("idx", "forged_gzip_size", gz(idx([3], [1, 2, 3]))[:-4] + b"\xff" * 4)

    # ---- image
    write("image", "gray.png", png("L"))
    write("image", "gray_alpha.png", png("LA"))
    write("image", "rgb.png", png("RGB"))
    write("image", "rgba.png", png("RGBA"))
    write("image", "palette.png", png("P"))
    write("image", "gray16.png", png("I;16"))
    write("image", "rgb_9x7.png", png("RGB", 9, 7))
    write("image", "gray.jpg", jpeg("L"))
    write("image", "rgb.jpg", jpeg("RGB", 16, 8))
    write("image", "progressive.jpg", jpeg("RGB", 8, 16, progressive=True))
    write("image", "truncated.png", png("RGB")[:40])
    write("image", "truncated.jpg", jpeg("RGB")[:100])

    # ---- tar_dataset
    cat, dog = png("L", 4, 4), jpeg("RGB", 8, 8)
    good = [("cat", None), ("cat/a.png", cat), ("dog/b.jpg", dog),
            ("dog/c.png", png("RGB", 3, 5))]
    write("tar_dataset", "two_classes.tar", tar(good))
    write("tar_dataset", "two_classes.tar.gz", tar(good, "w:gz"))
    write("tar_dataset", "dot_prefix.tar",
          tar([("./cat/a.png", cat), ("./dog/", None), ("./dog/b.jpg", dog),
               ("cat/._a.png", b"litter")]))
    write("tar_dataset", "escape.tar", tar([("../cat/a.png", cat)]))
    write("tar_dataset", "symlink.tar",
          tar([("cat/a.png", cat), ("dog/b.png", ("sym", "../cat/a.png"))]))
    write("tar_dataset", "hardlink.tar",
          tar([("cat/a.png", cat), ("dog/b.png", ("hard", "cat/a.png"))]))
    write("tar_dataset", "nested.tar", tar([("cat/x/a.png", cat)]))
    write("tar_dataset", "corrupt_image.tar",
          tar([("cat/a.png", cat), ("dog/b.jpg", dog[:60])]))
    write("tar_dataset", "empty_class.tar",
          tar([("cat/a.png", cat), ("dog", None)]))

    # ---- torchscript_archive
    module = [("m/data.pkl", b"\x80\x02}q\x00."), ("m/code/__torch__/m.py",
              b"class M(Module):\n  pass\n"), ("m/version", b"3\n")]
    write("torchscript_archive", "module_stored.zip", zipped(module))
    write("torchscript_archive", "module_deflated.zip",
          zipped(module, zipfile.ZIP_DEFLATED))
    write("torchscript_archive", "no_code.zip", zipped(module[:1]))
    write("torchscript_archive", "truncated.zip", zipped(module)[:-30])

    # ---- job_spec
    write("job_spec", "fine_tune_defaults", job_spec(
        'kind: FINE_TUNE backbone_id: "bb" data { dataset_id: "ds" }'))
    write("job_spec", "fine_tune_full", job_spec("""
        kind: FINE_TUNE backbone_id: "bb" epochs: 4 batch_size: 8 seed: 7
        data { dataset_id: "ds" class_subset: [0, 1, 3]
               samples_per_class: 3 validation_fraction: 0.25
               max_test_samples: 2 }
        freeze { mode: LAST_N_BLOCKS n_blocks: 2 backbone_lr_scale: 0.1
                 layer_decay: 0.5 block_lr_scales { key: "fc" value: 2 }
                 gradual_unfreeze { epoch: 2 n_blocks: 3 } }
        head { hidden_sizes: [16, 8] dropout: 0.2 }
        optimizer { kind: SGD learning_rate: 0.05 momentum: 0.8
                    weight_decay: 0.0001 }
        schedule { kind: STEP warmup_epochs: 1 step_epochs: 2
                   step_gamma: 0.5 }
        input_fit { mode: RESIZE_CENTER_CROP shorter_side: 36 }
        early_stopping { metric: "val_loss" patience: 2 }
        augment { random_resized_crop: true horizontal_flip: true }
        label_smoothing: 0.1 grad_clip_norm: 1
        """))
    write("job_spec", "pretrain", job_spec("""
        kind: PRETRAIN epochs: 3 seed: 1
        pretrain { backbone_name: "tiny" base_width: 8 }
        input_spec { channels: 1 height: 24 width: 24
                     fit { mode: RESIZE_CENTER_CROP } }
        data { validation_fraction: 0.5 }
        """))
    # NaN passed the range checks once (job_spec_fuzzer's find).
    write("job_spec", "nan_numbers", job_spec("""
        kind: FINE_TUNE backbone_id: "bb"
        optimizer { kind: SGD momentum: nan weight_decay: inf }
        head { dropout: nan } data { validation_fraction: nan }
        """))
    write("job_spec", "multitask", job_spec("""
        kind: MULTITASK backbone_id: "bb" epochs: 2
        data { dataset_id: "ds" class_subset: [0, 1, 2] }
        freeze { mode: FULL backbone_lr_scale: 0.1 }
        multitask { classes_loss_weight: 0.5
          tasks { name: "coarse" class_names: ["a", "b"]
                  label_map: [0, 1, 1, 0] loss_weight: 2 }
          tasks { name: "odd" class_names: ["x", "y"]
                  label_map: [0, 1, 0, 1] } }
        """))
    write("job_spec", "text", job_spec("""
        kind: FINE_TUNE backbone_id: "bb" epochs: 3 batch_size: 4
        data { dataset_id: "ds" class_subset: [0, 1] }
        freeze { mode: FULL backbone_lr_scale: 0.1 }
        text { pooling: "conv" max_tokens: 64 conv_channels: 8 }
        """))
    write("job_spec", "bad_epochs", job_spec(
        "kind: FINE_TUNE epochs: -3 device: \"tpu\""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
