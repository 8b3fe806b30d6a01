"""The run layer: :class:`~helpers.run.run.Run`, one run folder the six notebooks share, its
cached stages (``stages``), its artifact cache (``cache``), the parameters a run accepts and where
its images come from (``parameters``). Nothing below imports it."""
