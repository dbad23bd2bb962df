"""The example analysis: count the words of an input file and write them upper-cased.

    python3 analyse.py data.txt         -> result.txt
    python3 analyse.py part-3.txt       -> result-3.txt (with calib.txt's constant, when present)
"""

import os
import sys

source = sys.argv[1]
text = open(source).read()
scale = float(open("calib.txt").read().split()[0]) if os.path.exists("calib.txt") else 1.0
stem = os.path.splitext(os.path.basename(source))[0]
result = "result.txt" if stem == "data" else f"result-{stem.rpartition('-')[2]}.txt"
with open(result, "w") as fh:
    fh.write(text.upper())
    fh.write(f"words: {len(text.split())}, weighted: {len(text.split()) * scale:g}\n")
print("analysed", source, "into", result)
