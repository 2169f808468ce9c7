"""`tuneloop demo`: the closed loop end to end (`run`), on synthetic support traffic (`traffic`)."""
