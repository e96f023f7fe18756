"""Where files live inside one sample folder of the real dataset (AIDA micromen layout).

The phantom writes this layout and ingestion reads it, so real and phantom samples take one path.
"""

MR_MAT = "coreg_fine/ver1/MR.mat"  # struct MR: MD, FA, FAIP, ROI, J_11, J_12, J_22 (MR grid)
HE_MAT = "coreg_fine/ver1/HE.mat"  # HE: uint8 H x W x 3, coregistered to the MR grid
HE_MASK_MAT = "coreg_fine/ver1/HE_mask.mat"  # HE_mask (full resolution), dHE_mask (MR grid)
NUCLEI_TSV = "cell_density/QuPath/measurements.tsv"  # one row per nucleus
CENTROID_X, CENTROID_Y = "Centroid_X_px", "Centroid_Y_px"  # columns (x = image column, y = row)

# Phantom only: the truth behind the rendered tissue.
TRUTH_LABELS = "phantom_truth/nuclei_labels.h5"  # dataset "labels": uint32 H x W, 0 = no nucleus
TRUTH_NUCLEI = "phantom_truth/nuclei.parquet"  # one row per nucleus: label, centroid, axes, angle
TRUTH_TARGETS = "phantom_truth/targets.json"  # how MD/FA were made (real or derived) and options
