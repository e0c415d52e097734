"""Load stage: a checkpoint becomes a module in eval mode, after audits that run none of its code."""
