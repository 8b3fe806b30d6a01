"""The data layer: the MVTec AD layout (``mvtec``), the synthetic "metal nut" set (``synthetic``),
the download of a category and Google Drive in Colab (``download``), and where a run's images come
from (``source``). Imports only :mod:`helpers.core`."""
