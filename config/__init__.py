"""What a user asks for: the typed training and sweep configurations, the process's settings
(environment and defaults) and the error a user can fix."""
