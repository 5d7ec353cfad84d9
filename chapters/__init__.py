"""One runnable module per book section: `python -m chapters.lenet`."""
