"""The synthetic clip set's command line, from a source checkout: `python datasets/make_synthetic.py ROOT ...`.
The generator itself ships in the package (`flexgen.synthetic`), so `flexgen demo` runs from an installed wheel."""

from flexgen.synthetic import MOTIONS, make_synthetic, main, render_clip, write_mp4, write_split_lists  # noqa: F401

if __name__ == "__main__":
    main()
