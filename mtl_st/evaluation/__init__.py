"""Scoring and showing a model: shared metrics (`metrics`), STS scoring (`sts`), printed examples (`examples`) and
training curves (`plot`)."""
