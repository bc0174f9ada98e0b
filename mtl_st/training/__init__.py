"""What `MultiTaskTrainer` and `train.py` use around the Trainer: optimizer parameter groups (`param_groups`),
up-front checks (`checks`), the output folder's guard (`runguard`), embedding preservation (`preservation`), PEFT
adapters (`adapters`), model set-up (`build`) and cross-validation (`cross_validation`)."""
