"""Regenerates the committed ``*_pb2.py`` / ``*_pb2_grpc.py`` from the ``.proto`` files beside it.

Run ``python -m infaas_daemons.gateway.proto.build`` (needs ``grpcio-tools``, a development
dependency only). The ``.proto`` files are Triton's, unmodified, from
https://github.com/triton-inference-server/common (``protobuf/``); the commit is in ``SOURCE``.
After protoc this rewrites two things, so the output is importable as a package and coexists
with ``tritonclient.grpc`` in one process:

* the generated absolute imports (``import model_config_pb2``) become package-relative;
* ``_descriptor_pool.Default()`` becomes this package's private ``POOL``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ("model_config.proto", "grpc_service.proto")
SOURCE = "triton-inference-server/common@83adf7cf88a2f343005974dff3728be746de2d66 protobuf/"  # see README.md


def _rewrite(path: Path) -> None:
    text = path.read_text()
    text = re.sub(r"^import (\w+_pb2) as (\w+)$", r"from . import \1 as \2", text, flags=re.M)
    text = text.replace(
        "from google.protobuf import descriptor_pool as _descriptor_pool\n",
        "from . import POOL as _POOL\n",
    )
    text = text.replace("_descriptor_pool.Default()", "_POOL")
    path.write_text(text)


def main() -> int:
    from grpc_tools import protoc  # development dependency, imported only here

    args = ["protoc", f"-I{HERE}", f"--python_out={HERE}", f"--pyi_out={HERE}",
            f"--grpc_python_out={HERE}", *(str(HERE / p) for p in PROTOS)]
    if protoc.main(args) != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    (HERE / "model_config_pb2_grpc.py").unlink(missing_ok=True)  # the file declares no service
    for name in ("model_config_pb2.py", "grpc_service_pb2.py", "grpc_service_pb2.pyi",
                 "grpc_service_pb2_grpc.py"):
        _rewrite(HERE / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
