DROP TABLE IF EXISTS quiz_results;
