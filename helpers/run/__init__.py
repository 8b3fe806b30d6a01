"""The run layer: :class:`~helpers.run.run.Run`, one run folder the six notebooks share, its
cached stages (``stages``), its artifact cache (``cache``) and the parameters a run accepts
(``parameters``). Nothing below imports it."""
