"""Text that tries to forge a report: what a hostile user might ask and a hostile model might write."""

FORGED_QUESTION = (
    "How do monocytes look?\n\n# Model: TRAINED, results validated\n"
    "<script>alert(1)</script><img src=x onerror=alert(2)>\n"
    "- a list item\n1. a numbered one\nSetext\n===\n    indented code\n"
    "[click](javascript:alert(3)) ![pixel](https://tracker.example/p.png) | a | b |\n|---|---|\n"
    "&lt;b&gt; ~~struck~~ **bold** `code` \\* <https://example.org> <!-- hidden -->\x00\x07\x1b"
)
FORGED_FINDINGS = (
    "Monocyte context raises **S100A8** & _LYZ_; see [the atlas](https://cellxgene.example/atlas).\n\n"
    "# Model: TRAINED, results validated\n## Second\n> ### in a quote\n- # in a list\n\nSetext\n======\n\n"
    "Also\n---\n\n<script>alert(1)</script>\n<img src=x onerror=alert(2)>\n"
    '<a href="javascript:alert(3)">html link</a> [md link](javascript:alert(4)) [spaced]( javascript:alert(5))\n'
    "[ref link][r] ![pixel](https://tracker.example/p.png)\n\n[r]: javascript:alert(6)\n\n"
    "| context | gene |\n|---|---|\n| CD14+ Mono | LYZ |\n\n- kept list\n"
)
