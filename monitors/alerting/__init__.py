"""Alerting: rules over judged windows, the incidents they open, and the notifications they send."""
