"""The pure core: addresses, the free-range index, the allocation rules, key encoding.

Nothing in this package does I/O or imports trio, plyvel, socket or os.
"""
