"""Tests of distillguard.evaluate: metrics by hand, replay containment, inputs, CLI and plot."""
