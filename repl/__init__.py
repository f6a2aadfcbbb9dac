"""The operator's workspace: one Session (read, compile and evaluate Hy) and its front ends."""
