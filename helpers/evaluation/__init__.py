"""The evaluation layer (notebook 05): image and pixel AUROC, AUPRO, PRO, thresholds on arrays
(``metrics``); a test set's metrics and the one ``metrics.json`` writer (``report``)."""
