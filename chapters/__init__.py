"""One file per book section, a script (`python -m chapters.lenet`) and a notebook (`make notebooks`)."""
