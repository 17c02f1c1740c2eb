"""The process: entry point, the epoll server, the method table, the single writer, systemd glue."""
