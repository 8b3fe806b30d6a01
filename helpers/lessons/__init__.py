"""What the notebooks show and need around the algorithm: figures (``viz``), widgets, timing
(notebook 04) and the Colab setup cell (``colab``)."""
