"""The application layer: services by capability (access, tokens, directory, members, expiry) over one unit of
work, the runtime that composes them, and the compliance exports."""
