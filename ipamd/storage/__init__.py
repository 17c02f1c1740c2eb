"""Durable state: the LevelDB store (the only plyvel user), its committer thread, the log reader,
`ipamd check`, and importing host-local's state."""
