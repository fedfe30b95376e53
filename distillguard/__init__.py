"""distillguard: find and stop distillation attacks on an LLM API without hurting real customers."""

__version__ = "0.1.0"
