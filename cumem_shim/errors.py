"""cumem_shim's exception tree. Each error says whether it is fatal and how to fix it.

ShimError
 ├─ ShimConfigError     the shim was asked for but cannot run here (fatal: the server must not
 │                      start unpatched): missing hook in this SGLang, missing cuda-python,
 │                      unsupported pool layout, bad environment value
 ├─ DriverError         a CUDA driver call failed; names the call and its CUresult (fatal for
 │                      the operation; the KV range is left as it was before the call)
 └─ ProtocolError       a control-channel message is malformed (the request is refused, the
                        connection stays usable)
"""

from __future__ import annotations


class ShimError(Exception):
    """Base of cumem_shim's own errors."""

    transient: bool = False


class ShimConfigError(ShimError):
    """The shim was requested (CHIMERA_SHIM_SOCKET is set) but cannot be installed."""


class DriverError(ShimError):
    """A CUDA driver API call failed. ``call`` is the driver function, ``code`` the CUresult
    name (e.g. ``CUDA_ERROR_OUT_OF_MEMORY``)."""

    def __init__(self, call: str, code: str, detail: str = "") -> None:
        self.call, self.code = call, code
        hint = ""
        if code == "CUDA_ERROR_OUT_OF_MEMORY":
            hint = " (the GPU has no free physical memory for another KV page: lower the limits)"
            self.transient = True
        super().__init__(f"{call} failed: {code}{': ' + detail if detail else ''}{hint}")


class ProtocolError(ShimError):
    """A control-channel request is not valid JSON or not a known operation."""

    transient = True
