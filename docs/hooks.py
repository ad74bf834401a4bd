"""MkDocs hook: serve the figures that the docs show from where the pipeline writes them.

A page links such a figure by its path in the repository (`../data/benchmark/report/...` from
docs/), which is also how GitHub resolves it; the build finds it here instead of a copy under
docs/, so a `dvc repro` that redraws it updates the site too, and a figure that goes missing
fails the strict build like any broken link.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

# Repository paths (relative to mkdocs.yml) of DVC stage outputs that pages show.
REPOSITORY_FIGURES = ("data/benchmark/report/learning_curves.png",)


def on_files(files, config):
    root = Path(config.config_file_path).parent
    for path in REPOSITORY_FIGURES:
        source = root / path
        if not source.is_file():
            continue  # the page's link to it is then reported as broken
        # Included explicitly: MkDocs' default exclusion of dot paths would match "../".
        figure = File.generated(
            config, f"../{path}", abs_src_path=str(source), inclusion=InclusionLevel.INCLUDED
        )
        figure.dest_uri = f"repository/{path}"
        files.append(figure)
    return files
