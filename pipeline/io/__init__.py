"""Contracts between stages: the movie store and the tables."""

from .movie import Movie, MovieError, MovieWriter, create_movie, open_movie, write_movie
from .tables import TableError, position_columns, read_table, table_metadata, write_table

__all__ = [
    "Movie",
    "MovieError",
    "MovieWriter",
    "create_movie",
    "open_movie",
    "write_movie",
    "TableError",
    "position_columns",
    "read_table",
    "table_metadata",
    "write_table",
]
