"""Draws docs/figures/conformance_bounds.png: how the harness's scale bound follows the
conditioning of the scale. Run: python docs/figures/conformance_bounds.py

One element, CProp-SGD in float32 (beta = 0.9, bft), a gradient whose mean drifts from
-1 to +1 through zero with noise. The "port" computes in float64 and is rounded to float32
for the comparison: a legitimate implementation that rounds differently. Top: the
reference's scale. Bottom: |s_port - s_ref| and the bound of cprop_ref.tolerance, which
rises where the scale is steep in (m, v); where it reaches 1 (shaded, if any) the element
is ill-conditioned and counted, not compared.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cprop_ref.conformance import PortConfig, ReferenceRun  # noqa: E402
from cprop_ref.conformance.bounds import RunBounds  # noqa: E402

STEPS = 120
hp = dict(lr=0.0, cprop_beta=0.9, cprop_c=1.0, cprop_eps=1e-8, cprop_cdf="bft", momentum=0.0,
          dampening=0.0, weight_decay=0.0, nesterov=False)  # fmt: skip
config32 = PortConfig("CPropSGD", hp, "float32")
config64 = PortConfig("CPropSGD", hp, "float64")
rng = np.random.default_rng(7)
grads = (np.linspace(-1.0, 1.0, STEPS) + 0.6 * rng.standard_normal(STEPS)).astype(np.float32)

ref = ReferenceRun(config32, [np.zeros(1, np.float32)])
port = ReferenceRun(config64, [np.zeros(1)])
bounds = RunBounds(config32, [(1,)])
s_ref, diff, bound = [], [], []
for g in grads:
    g32 = np.array([g], np.float32)
    p_before, st_before = ref.params(), ref.states()
    ref.step([g32])
    port.step([g32.astype(np.float64)])
    scale = ref.scales()[0]
    b = bounds.advance(0, p_before[0], g32, st_before[0], ref.states()[0], scale, ref.params()[0])
    s_ref.append(float(scale[0]))
    diff.append(abs(float(np.float32(port.scales()[0][0])) - float(scale[0])))
    bound.append(float(b["scale"][0]))

steps = np.arange(1, STEPS + 1)
fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 4.6), sharex=True, constrained_layout=True)
top.plot(steps, s_ref, color="k", lw=1.2)
top.set_ylabel("reference scale s")
top.set_title("CProp-SGD float32, beta 0.9: mean gradient drifts from -1 to +1", fontsize=10)
ill = np.array(bound) >= 1.0
for ax in (top, bottom):
    for i in np.flatnonzero(ill):
        ax.axvspan(i + 0.5, i + 1.5, color="tab:orange", alpha=0.25, lw=0)
bottom.semilogy(steps, np.maximum(bound, 1e-12), color="tab:blue", label="bound (tolerance policy)")
bottom.semilogy(steps, np.maximum(diff, 1e-12), ".", color="tab:red", ms=4, label="|s_port - s_ref| (float64 port)")
bottom.set_ylim(1e-9, 2.0)
bottom.set_xlabel("step")
bottom.set_ylabel("scale error")
bottom.legend(loc="lower left", fontsize=8, frameon=False)
if ill.any():
    bottom.text(0.99, 0.04, "shaded: bound = 1, ill-conditioned: counted, not compared", transform=bottom.transAxes,
                ha="right", fontsize=8, color="tab:orange")  # fmt: skip
out = Path(__file__).with_suffix(".png")
fig.savefig(out, dpi=110)
print(
    f"wrote {out}: {int(ill.sum())} of {STEPS} steps ill-conditioned, max ratio {max(d / b for d, b in zip(diff, bound) if b < 1):.3g}"
)
