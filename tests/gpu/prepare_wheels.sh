#!/bin/bash
# Run here (the CPU machine, network on), once: bash tests/gpu/prepare_wheels.sh
# Downloads stock SGLang 0.5.17 and what it needs on the lent GPU machine (44 wheels for Python
# 3.12, torch 2.11 comes with the machine's image) into the git-ignored .whl1 to .whl4 of the
# repo root, each under ~39 MiB so that the tracked tree (~17 MiB) plus one of them stays under
# the 64 MiB a device call carries. Two wheels are trimmed: sglang-kernel without the FA3 attention
# kernels (sgl_kernel/flash_ops.abi3.so, 1.1 GB unpacked), hence --attention-backend triton on
# that machine, and xgrammar without its unused static library. docs/gpu-testing.md says how
# the four calls carry them.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=$(mktemp -d); mkdir -p .whl1 .whl2 .whl3 .whl4
PLAT="--platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64"
PIP="python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT -q -d $D"
PIP_CONSTRAINT= $PIP sglang==0.5.17 sglang-kernel==0.4.5 flashinfer-python==0.6.15.post1 xgrammar==0.2.1 \
  transformers==5.12.1 tokenizers==0.22.2 apache-tvm-ffi==0.1.11 torch-memory-saver==0.0.10 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 pydantic-extra-types==2.11.1 \
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 httptools==0.9.0 uvloop==0.23.0 python-multipart==0.0.34 sniffio==1.3.1 \
  orjson==3.13.0 msgspec==0.22.0 pyzmq==27.3.0 pybase64==1.5.1 setproctitle==1.3.8 zstandard==0.25.0 watchfiles==1.3.0 \
  openai==2.6.1 jiter==0.19.0 distro==1.9.0 partial-json-parser==0.2.1.1.post7 compressed-tensors==0.20.0 dill==0.4.1 \
  gguf==0.19.0 loguru==0.7.3 ipython==9.18.1 traitlets==5.16.1 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
  referencing==0.37.0 rpds-py==2026.9.1 soundfile==0.13.1 cffi==2.1.1 pycparser==3.12 opentelemetry-api==1.45.2 cuda-python==13.4.4
# Drop the two payloads nothing loads there: FA3 (sgl_kernel/flash_ops.abi3.so) and xgrammar's static lib.
python3 - "$D" <<'PY'
import sys, glob, re, zipfile, os
d = sys.argv[1]
for pat, drop in [("sglang_kernel-*.whl", r"^sgl_kernel/flash_ops\.abi3\.so$"), ("xgrammar-*.whl", r"^xgrammar/lib/libxgrammar\.a$")]:
    src = glob.glob(os.path.join(d, pat))[0]; tmp = src + ".tmp"; rx = re.compile(drop)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for i in zin.infolist():
            if rx.search(i.filename): continue
            data = zin.read(i.filename)
            if i.filename.endswith(".dist-info/RECORD"):
                data = ("\n".join(l for l in data.decode().splitlines() if not rx.search(l.split(",")[0])) + "\n").encode()
            zi = zipfile.ZipInfo(i.filename, date_time=i.date_time); zi.external_attr = i.external_attr
            zout.writestr(zi, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    os.replace(tmp, src)
PY
rm -f .whl1/* .whl2/* .whl3/* .whl4/*
# Each call carries the tracked tree too (~17 MiB): every folder stays under ~39 MiB, and the
# last call's (.whl3) leaves room for .gpu's kernel caches (~6 MiB).
mv $D/sglang_kernel-*.whl .whl1/
mv $D/sglang-0.5.17-*.whl $D/flashinfer_python-*.whl .whl2/
mv $D/transformers-*.whl $D/xgrammar-*.whl .whl4/
mv $D/*.whl .whl3/; rmdir $D
du -sh .whl1 .whl2 .whl3 .whl4
