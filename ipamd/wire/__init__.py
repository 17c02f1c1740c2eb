"""The wire: msgpack-RPC framing and the messages' shapes (DESIGN.md section 4). Pure: no I/O."""
