"""The data layer: the MVTec AD layout (``mvtec``), the synthetic "metal nut" set (``synthetic``),
the download of a category and Google Drive in Colab (``download``). Imports only
:mod:`helpers.core`."""
