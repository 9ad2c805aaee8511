"""Training loops, evaluation, the teacher cache and run folders (see the modules).

A regular package, so that setuptools' find_packages ships it: without this file a
non-editable ``pip install .`` left dglkd.engine out and ``dglkd distill`` failed.
Importing it imports nothing else; DGL is imported by the graph modules alone.
"""
