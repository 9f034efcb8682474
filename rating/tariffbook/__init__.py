"""The tariff book: the billing team's files read, validated and held in force."""
