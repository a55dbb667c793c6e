# Sourced by tomczak_welling_protocol.sh and tomczak_welling_variants.sh: the overrides they share.
# authors: the authors' optimizer and network details (AdamNormGrad, He initialization, log-variances clipped to
# [-6, 2]); decay: the decay phase's schedule (cosine from 5e-4 to 1e-5, the KL weight at 1 from the start); ema: the
# averaging phase's (a constant 5e-4, the KL weight at 1, the parameters' moving average with decay 0.9999 per step,
# uncorrected: optim.ema_debias=false, the average the committed runs were made with before debiasing became the
# default, so that these scripts still describe them and resume them).
# shellcheck disable=SC2034  # used by the scripts that source this file
authors=(optim.name=adam_normgrad model.kernel_init=he_normal model.logvar_bound=0 model.logvar_clip=-6,2)
decay=(optim.learning_rate=5e-4 optim.schedule=cosine optim.final_lr_fraction=0.02 kl_warmup_epochs=0)
ema=(optim.learning_rate=5e-4 optim.schedule=constant kl_warmup_epochs=0 optim.ema_decay=0.9999
     optim.ema_debias=false)
