"""The pure core: attributes in, a tree with every subtotal out.

`usage` reads the attribute vocabularies into one `Usage` per span, `pricing` prices it,
`rollup` builds the tree and rolls the figures up (the rules of `docs/rollup.md`), and
`vocabulary` names the figures a span counts for an exporter. Nothing here holds state,
takes a lock, does I/O or imports anything of the package above it (a test checks).
"""
