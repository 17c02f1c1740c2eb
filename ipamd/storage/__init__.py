"""Durable state: the LevelDB store (store.py and its modules, the only plyvel users),
its committer thread, the log reader, `ipamd check`, and importing host-local's state."""
