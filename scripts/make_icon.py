"""Rasterises assets/icon/cellforge.svg's shapes to assets/icon/cellforge-256.png with
matplotlib (the PNG the Linux packages and the AppImage use). Run from the repository root."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Circle, FancyBboxPatch

fig = plt.figure(figsize=(2.56, 2.56), dpi=100)
ax = fig.add_axes([0, 0, 1, 1])
ax.set_xlim(0, 256)
ax.set_ylim(256, 0)
ax.axis("off")
fig.patch.set_alpha(0)
ax.add_patch(FancyBboxPatch((8, 8), 240, 240, boxstyle="round,pad=0,rounding_size=48",
                            fc="#1f2a44", ec="none"))
for x1, y1, x2, y2 in [(78, 84, 128, 128), (178, 78, 128, 128), (128, 128, 92, 182),
                       (128, 128, 176, 174), (78, 84, 178, 78)]:
    ax.plot([x1, x2], [y1, y2], color="#9fb3d9", lw=3.6, alpha=0.85, solid_capstyle="round",
            zorder=1)
for x, y, r, c in [(128, 128, 30, "#ff7f0e"), (128, 128, 12, "#ffe3c4"), (78, 84, 18, "#1f77b4"),
                   (178, 78, 16, "#2ca02c"), (92, 182, 16, "#d62728"), (176, 174, 20, "#9467bd")]:
    ax.add_patch(Circle((x, y), r, fc=c, ec="none", zorder=3))
fig.savefig("assets/icon/cellforge-256.png", transparent=True)
