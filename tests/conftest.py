"""Every test process builds NNCF's C++ kernels where a pipeline run would (compress/nncf_extension.py)."""

from compress.nncf_extension import configure_environment

configure_environment()
