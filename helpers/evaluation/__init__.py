"""The evaluation layer (notebook 05): image and pixel AUROC, AUPRO, PRO, thresholds
(``metrics``) and the one ``metrics.json`` writer (``report``)."""
