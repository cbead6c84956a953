"""The demo's two "hospital" files, made from scikit-learn's bundled breast-cancer data.

They are not hospital data: the rows are the public Wisconsin diagnostic breast-cancer data
set (569 rows, 30 features, UCI), split 60/40 into two CSV files to play two data providers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from headwater.errors import HeadwaterError

DATA_NOTE = ("derived from scikit-learn's bundled copy of the public Wisconsin diagnostic "
             "breast-cancer data set (UCI, 569 rows); split 60/40 into two files to play two "
             "hospitals. Not patient records of any hospital")
LICENCE = "CC BY 4.0 (UCI Machine Learning Repository)"
HOSPITALS = ("hospital_a.csv", "hospital_b.csv")
# In the demo's story the rows are patients' measurements and diagnoses (health data, GDPR
# Art. 9): every column is declared personal, so the report lists them (names only).
PERSONAL_COLUMNS = tuple(n.replace(" ", "_") for n in (
    "mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness",
    "mean compactness", "mean concavity", "mean concave points", "mean symmetry",
    "mean fractal dimension", "radius error", "texture error", "perimeter error",
    "area error", "smoothness error", "compactness error", "concavity error",
    "concave points error", "symmetry error", "fractal dimension error", "worst radius",
    "worst texture", "worst perimeter", "worst area", "worst smoothness",
    "worst compactness", "worst concavity", "worst concave points", "worst symmetry",
    "worst fractal dimension")) + ("label",)


def breast_cancer() -> tuple[list[str], np.ndarray]:
    """(column names with 'label' last, rows [569, 31]) from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError:
        raise HeadwaterError("the demo needs scikit-learn: pip install 'headwater[demo]'") \
            from None
    data = load_breast_cancer()
    header = [n.replace(" ", "_") for n in data.feature_names] + ["label"]
    return header, np.column_stack([data.data, data.target])


def write_hospital_files(folder: Path) -> tuple[Path, Path]:
    """Two CSV files, hospital_a (first 60% of the rows) and hospital_b (the rest)."""
    header, rows = breast_cancer()
    folder.mkdir(parents=True, exist_ok=True)
    split = len(rows) * 3 // 5
    paths = (folder / HOSPITALS[0], folder / HOSPITALS[1])
    for path, part in zip(paths, (rows[:split], rows[split:]), strict=True):
        lines = [",".join(header)] + [
            ",".join(f"{v:.6g}" for v in r[:-1]) + f",{int(r[-1])}" for r in part]
        path.write_text("\n".join(lines) + "\n")
    return paths
