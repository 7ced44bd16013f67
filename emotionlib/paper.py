"""The numbers the paper publishes, kept as data so notebooks can put them *beside* a run's, never in place of it.

Source: Zhu et al. (IJCAI 2017), Table 1 and Fig. 6, measured on FI (You et al. 2016), 8 classes.
"""

from __future__ import annotations

import numpy as np

CLASSES = ("amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness")

#: Table 1: accuracy (%) on FI. Baselines first, then the paper's variants.
TABLE1 = {
    "Zhao": 46.52,
    "Rao": 51.67,
    "AlexNet+SVM": 57.89,
    "ResNet-101": 60.82,
    "MldrNet": 65.23,
    "CNN+W/O Branch+Softmax": 59.61,
    "CNN+5 Branches+Ensemble": 66.78,
    "CNN+5 Branches+LSTM": 70.52,
    "CNN+5 Branches+Bi-LSTM": 72.24,
    "CNN+5 Branches+GRU": 71.33,
    "CNN+4 Branches+Bi-GRU": 69.75,
    "CNN+6 Branches+Bi-GRU": 72.97,
    "CNN+5 Branches+Bi-GRU": 73.03,
}

#: our variant name -> Table 1 accuracy (%); max/avg have no row in Table 1.
TABLE1_VARIANTS = {
    "softmax": 59.61,
    "ensemble": 66.78,
    "lstm": 70.52,
    "bilstm": 72.24,
    "gru": 71.33,
    "bigru4": 69.75,
    "bigru6": 72.97,
    "bigru": 73.03,
    "bigru5": 73.03,
}

#: Table 1 row label of each of our variant names.
TABLE1_ROW = {
    "softmax": "CNN+W/O Branch+Softmax",
    "ensemble": "CNN+5 Branches+Ensemble",
    "lstm": "CNN+5 Branches+LSTM",
    "bilstm": "CNN+5 Branches+Bi-LSTM",
    "gru": "CNN+5 Branches+GRU",
    "bigru4": "CNN+4 Branches+Bi-GRU",
    "bigru6": "CNN+6 Branches+Bi-GRU",
    "bigru": "CNN+5 Branches+Bi-GRU",
    "bigru5": "CNN+5 Branches+Bi-GRU",
}

# Fig. 6: row-normalised confusion matrices (rows: true class, columns: predicted), in CLASSES order.
_FIG6 = """
0.80 0.01 0.02 0.04 0.01 0.09 0.01 0.02 0.78 0.02 0.02 0.07 0.00 0.07 0.01 0.03
0.02 0.38 0.03 0.16 0.04 0.10 0.10 0.16 0.03 0.52 0.06 0.09 0.03 0.06 0.09 0.12
0.08 0.00 0.68 0.15 0.01 0.05 0.01 0.02 0.07 0.02 0.74 0.08 0.00 0.06 0.01 0.02
0.04 0.02 0.08 0.71 0.02 0.05 0.01 0.07 0.03 0.03 0.07 0.76 0.01 0.06 0.01 0.03
0.03 0.04 0.02 0.11 0.61 0.03 0.06 0.11 0.00 0.09 0.02 0.03 0.68 0.03 0.04 0.11
0.21 0.03 0.03 0.12 0.01 0.56 0.01 0.02 0.17 0.01 0.01 0.13 0.02 0.63 0.02 0.01
0.07 0.08 0.07 0.07 0.10 0.07 0.31 0.23 0.06 0.11 0.03 0.04 0.09 0.09 0.44 0.14
0.03 0.05 0.04 0.17 0.03 0.02 0.05 0.61 0.02 0.09 0.02 0.05 0.07 0.02 0.08 0.65
"""
_rows = np.array([[float(v) for v in line.split()] for line in _FIG6.strip().splitlines()])
FIG6_MLDRNET = _rows[:, :8]
FIG6_OURS = _rows[:, 8:]

FI_SPLIT = {"train": 18532, "test": 3474, "val": 1158}  # Sec. 4.3

#: FI's images per class as later work reports them (data/README.md; You et al. 2016 publish 23,308 in all): not
#: balanced - anger and fear are about 5 % of FI each, the rare classes Fig. 6's "more balanced" reading is about.
FI_CLASS_COUNTS = {
    "amusement": 4942,
    "anger": 1266,
    "awe": 3151,
    "contentment": 5374,
    "disgust": 1658,
    "excitement": 2963,
    "fear": 1032,
    "sadness": 2922,
}
