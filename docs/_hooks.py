"""mkdocs hooks (see ``mkdocs.yml``): publish the benchmark plots with the site.

``benchmarks/results.md`` is included into ``docs/performance.md`` (pymdownx.snippets),
so an image it shows as ``![...](results.png)``, its neighbour on GitHub, is resolved in
the site relative to ``performance.md``, at the docs root. This hook adds each image of
``benchmarks/`` there.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

IMAGES = ("*.png", "*.svg", "*.json")  # the plot and the raw rows it links


def on_files(files: Files, config) -> Files:
    benchmarks = Path(config.config_file_path).parent / "benchmarks"
    for pattern in IMAGES:
        for image in sorted(benchmarks.glob(pattern)):
            files.append(
                File(
                    image.name,
                    src_dir=str(benchmarks),
                    dest_dir=config.site_dir,
                    use_directory_urls=config.use_directory_urls,
                )
            )
    return files
