"""dlm.runtime's compile guard: compiled CPU code stays right when the vector width changes between runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from dlm.runtime import pin_cpu_vector_width, should_compile

# A module with reductions and a softmax over odd sizes, so vector loops have tails.
SCRIPT = """
import sys, torch
from dlm.runtime import compile_model
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(45, 29), torch.nn.RMSNorm(29), torch.nn.Softmax(-1), torch.nn.ReLU())
x = torch.randn(37, 45)
with torch.no_grad():
    eager = net(x)
    compiled = compile_model(net, "yes", torch.device("cpu"))(x)
print(float((compiled - eager).abs().max()))
"""


def test_pinned_width_is_the_one_inductor_picks():
    import torch._inductor.config as inductor_config
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    picked = pick_vec_isa()
    before = inductor_config.cpp.simdlen
    try:
        inductor_config.cpp.simdlen = None
        pin_cpu_vector_width()
        assert inductor_config.cpp.simdlen == picked.bit_width()
        assert pick_vec_isa() == picked  # the same choice, now named in the cache key
        inductor_config.cpp.simdlen = 256
        pin_cpu_vector_width()  # a width the user set stays
        assert inductor_config.cpp.simdlen == 256
    finally:
        inductor_config.cpp.simdlen = before


@pytest.mark.skipif(not should_compile("auto", torch.device("cpu")), reason="no C++ compiler: nothing is compiled")
def test_code_compiled_for_one_vector_width_is_not_reused_under_another(tmp_path):
    """A plain run, then one held to AVX2 (dlm's AVX2 simulation), sharing torch's compiled-code cache: without
    the guard the second read the first's AVX-512 code and computed wrong numbers (torch 2.13). On a CPU without
    AVX-512 both runs pick AVX2 and this passes either way."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    env.pop("ATEN_CPU_CAPABILITY", None)
    for capability in (None, "avx2"):
        run_env = env if capability is None else {**env, "ATEN_CPU_CAPABILITY": capability}
        out = subprocess.run([sys.executable, "-c", SCRIPT], env=run_env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert float(out.stdout.strip().splitlines()[-1]) < 1e-5, (capability, out.stdout)
