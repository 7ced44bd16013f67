"""Names of the methods the command line offers, kept apart from the code that runs them.

The command line builds its parser from these on every call; the modules that run the methods (baselines:
torchvision and scikit-learn; small: pandas) load only when their command runs, which keeps the cold start of
`emotionlib predict` near that of `import torch`.
"""

from __future__ import annotations

#: Table 1's baselines (Sec. 4.2) that `emotionlib train --variant` accepts.
BASELINES: dict[str, str] = {
    "handcrafted-svm": "hand-crafted colour, texture and composition features (a subset of Machajdik & Hanbury "
    "2010 and Zhao et al. 2014) + linear SVM",
    "alexnet-svm": "AlexNet fc7 features + linear SVM (You et al. 2016); random init: AlexNet trained on this data",
    "resnet101": "ResNet-101 fine-tuned (He et al. 2016); random init: trained from scratch on this data",
}
#: Table 1 row of each baseline. "Zhao" is the closest row to our hand-crafted subset, not the same method.
TABLE1_BASELINE_ROW = {"handcrafted-svm": "Zhao", "alexnet-svm": "AlexNet+SVM", "resnet101": "ResNet-101"}

#: Sec. 4.4 (`emotionlib small`): the layouts of a small dataset and the methods compared on it.
SMALL_LAYOUTS = ("artphoto", "iaps", "fi")
SMALL_METHODS = ("ours", "handcrafted-svm", "alexnet-svm", "resnet101")
DEFAULT_SMALL_METHODS = ("ours", "handcrafted-svm", "alexnet-svm")
