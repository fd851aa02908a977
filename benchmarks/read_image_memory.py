"""Peak memory and time of :func:`segfpn.read_image` on large images, each read in a fresh process.

    python benchmarks/read_image_memory.py                  # the four cases below
    python benchmarks/read_image_memory.py --max-side 2000  # the reduced reads at another size

Cases: a 6300x6300 16-bit grayscale PNG (a smooth ramp: 92 KB on disk, 79 MB decoded) and a
6000x4000 JPEG (a street photo scaled up), each read at full size and reduced with ``max_side``
(1333 by default: the longest side the model sees). Every read runs in a process of its own,
which prints its ``/proc/self/status`` VmHWM (peak resident memory) before and after
``read_image``; the difference ("+delta") is what reading the image cost. The processes import
segfpn (torch), about 674 MiB, before they read.

Figures, MiB and seconds (2 cores shared with other jobs: times vary by 2x):

    case                           before (float64 path)       after
                                   peak  +delta   time         peak  +delta   time
    png16 6300x6300 full           1734   +1060   4.6-6.1 s     905    +231   1.0-1.3 s
    png16 6300x6300 max_side=1333     -       -       -         803    +129   0.7 s
    jpeg 6000x4000 full            1086    +413   0.4-0.7 s     848    +174   0.3-0.7 s
    jpeg 6000x4000 max_side=1333      -       -       -         698     +24   0.1 s

Before: a float64 copy of the 16-bit image and two more (``np.asarray(image, dtype=np.float64)``),
EXIF transposition and RGB conversion copying the whole image, ``np.asarray`` of a PIL image
holding it twice (``tobytes``). After: 16-bit and float values converted a few rows at a time,
copies only when the image changes, and with ``max_side`` a JPEG decoded at 1/4 scale
(``Image.draft``) then area-averaged to 1333 px. The result itself is 119 MB (png16) and 72 MB
(jpeg) at full size.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
STREET = ROOT / "examples" / "images" / "street_wide_17790319373.jpg"


def _peak_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024


def _child(path: str, max_side: int | None) -> None:
    """Read ``path`` once and print {"before", "after", "seconds", "shape"} as JSON."""
    sys.path.insert(0, str(ROOT))
    from segfpn.imageio import read_image

    before = _peak_mib()
    start = time.perf_counter()
    rgb = read_image(path) if max_side is None else read_image(path, max_side=max_side)
    seconds = time.perf_counter() - start
    print(json.dumps({"before": before, "after": _peak_mib(), "seconds": seconds, "shape": list(rgb.shape)}))


def _make_images(folder: Path) -> dict[str, Path]:
    ramp = (np.arange(6300, dtype=np.uint32) * 65535 // 6299).astype(np.uint16)
    png16 = folder / "ramp_6300x6300_16bit.png"
    Image.fromarray(np.ascontiguousarray(np.broadcast_to(ramp, (6300, 6300)))).save(png16)  # mode I;16
    jpeg = folder / "street_6000x4000.jpg"
    Image.open(STREET).convert("RGB").resize((6000, 4000), Image.Resampling.BICUBIC).save(jpeg, quality=90)
    return {"png16 6300x6300": png16, "jpeg 6000x4000": jpeg}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-side", type=int, default=1333)
    parser.add_argument("--child", nargs=2, metavar=("PATH", "MAX_SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, max_side = args.child
        _child(path, None if max_side == "none" else int(max_side))
        return
    with tempfile.TemporaryDirectory(prefix="segfpn-read-bench-") as tmp:
        images = _make_images(Path(tmp))
        print(f"{'case':<34}{'file':>9}{'peak MiB':>10}{'+delta':>9}{'time':>9}  shape")
        for name, path in images.items():
            for max_side in (None, args.max_side):
                out = subprocess.run([sys.executable, __file__, "--child", str(path), str(max_side or "none")],
                                     capture_output=True, text=True, check=True)
                figures = json.loads(out.stdout.splitlines()[-1])
                label = f"{name} " + ("full" if max_side is None else f"max_side={max_side}")
                print(f"{label:<34}{path.stat().st_size / 1e3:>7.0f}KB{figures['after']:>10.0f}"
                      f"{figures['after'] - figures['before']:>+9.0f}{figures['seconds']:>8.2f}s  "
                      f"{tuple(figures['shape'])}")


if __name__ == "__main__":
    main()
